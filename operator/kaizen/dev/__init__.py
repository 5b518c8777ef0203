"""The local development stack: a real Kubernetes control plane on loopback, for the demo and the tests.

``binaries`` finds the pinned upstream binaries (built by ``hack/build-binaries.sh`` or supplied through
``KUBEBUILDER_ASSETS``), ``pki`` mints the certificates they authenticate with, ``processes`` starts and stops them
without leaving strays, ``cluster`` puts them together as :class:`~kaizen.dev.cluster.LocalCluster`,
``node_agent`` runs the training pods kwok holds as local processes, and ``demo`` (with ``demo_data``) runs Kaizen's
whole loop on it.
Never imported by the operator.
"""
