{{/*
Names, labels and RBAC rules shared by the templates.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "kaizen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: "<release>-<chart>", or just "<release>" when it already contains the chart name.
Truncated to 63 characters because some Kubernetes name fields are limited to that (DNS labels).
*/}}
{{- define "kaizen.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label ("+" is not allowed in label values). */}}
{{- define "kaizen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods; they must never change across upgrades (a Deployment's selector is immutable). */}}
{{- define "kaizen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kaizen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "kaizen.labels" -}}
helm.sh/chart: {{ include "kaizen.chart" . }}
{{ include "kaizen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kaizen
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount: the one the chart creates, or an existing one. */}}
{{- define "kaizen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kaizen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image, tagged with the chart's appVersion unless image.tag is set. */}}
{{- define "kaizen.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
RBAC rules the operator needs in every namespace it watches; granted cluster-wide by a ClusterRole when
watchNamespaces is empty, otherwise by a Role in each watched namespace. Least privilege: no wildcards, no secrets.
*/}}
{{- define "kaizen.namespacedRules" -}}
# The three Kaizen resources: ImprovementLoops own RetrainJobs and Rollouts, which the operator creates and deletes.
- apiGroups: ["kaizen.dev"]
  resources: ["improvementloops", "retrainjobs", "rollouts"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["kaizen.dev"]
  resources: ["improvementloops/status", "retrainjobs/status", "rollouts/status"]
  verbs: ["get", "update", "patch"]
# RetrainJobs run the trainer as a Kubernetes Job.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# The trainer's JSON config is handed to its pod in a ConfigMap.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Trainer pods: their termination message carries the result; their log explains a failure.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The served Deployment (its model pointer) and the operator-owned canary Deployment.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Only to read the tokens an ImprovementLoop names (spec.prometheus.bearerTokenSecretRef,
# spec.feedback.tokenSecretRef): get by name, never list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Decisions and handler outcomes are reported as Events (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Cluster-scoped reads kopf makes on start-up in every mode: it scans CRDs to resolve the resources it serves and lists
namespaces to know which exist. Without them it runs degraded and logs permission warnings.
*/}}
{{- define "kaizen.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
