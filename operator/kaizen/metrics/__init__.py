"""The edge to the metrics backends: the only code that queries Prometheus (:mod:`kaizen.metrics.prometheus`)."""
