"""The edge that sends a loop's notifications over HTTP (:mod:`kaizen.notify.webhook`); what to send, and what the
attempts mean, is decided in :mod:`kaizen.logic.notifications`."""
