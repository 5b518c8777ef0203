"""Kaizen: a Kubernetes operator that closes the continuous-improvement loop of a served ML model.

Layers, from the inside out: ``api`` (pydantic models, the single source of the CRD schemas and of the trainer
contract), ``logic`` (pure decisions), ``controllers`` (one kopf module per kind), ``k8s`` (the only code that
talks to the Kubernetes API), ``cli`` and ``dev`` (the local control plane; never imported by the operator).
"""

__version__ = "0.1.0"
