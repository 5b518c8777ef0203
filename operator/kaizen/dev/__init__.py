"""The local development stack: a real Kubernetes control plane on loopback, for the demo and the tests.

``binaries`` finds the pinned upstream binaries (built by ``hack/build-binaries.sh`` or supplied through
``KUBEBUILDER_ASSETS``), ``pki`` mints the certificates they authenticate with, ``processes`` starts and stops them
without leaving strays, ``cluster`` puts them together as :class:`~kaizen.dev.cluster.LocalCluster`,
``node_agent`` (with ``serving``) runs the training and model-server pods kwok holds as local processes,
``service_proxy`` reaches a Service as kube-proxy would, ``prometheus``, ``collector`` and ``postgres`` run the
other services, ``support_domain``, ``users`` and ``traffic`` are the simulated users of a served model, and
``demo`` (with ``demo_data``) runs Kaizen's whole loop on it.
Never imported by the operator.
"""
