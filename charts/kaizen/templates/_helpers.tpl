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

{{/* Labels on every object of the release, whichever component it belongs to. */}}
{{- define "kaizen.commonLabels" -}}
helm.sh/chart: {{ include "kaizen.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kaizen
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on the operator's objects. */}}
{{- define "kaizen.labels" -}}
{{ include "kaizen.commonLabels" . }}
{{ include "kaizen.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount: the one the chart creates, or an existing one. */}}
{{- define "kaizen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kaizen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease the operator's replicas elect their leader on, in the release namespace. */}}
{{- define "kaizen.leaseName" -}}
{{- include "kaizen.fullname" . }}
{{- end }}

{{/* The Service of the operator's /metrics, the base truncated so that the whole stays a DNS label. */}}
{{- define "kaizen.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kaizen.fullname" . | trunc 55 | trimSuffix "-") }}
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
# A RetrainJob of several nodes: the headless Service that names the pods of its Indexed Job.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
# ... or, where Kubeflow Trainer is installed, a TrainJob (its pods are read as above).
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "create"]
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

{{/*
The collector's objects: "<fullname>-collector", the base truncated so that the whole stays a DNS label.
*/}}
{{- define "kaizen.collector.fullname" -}}
{{- printf "%s-collector" (include "kaizen.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the collector's pods. Their name differs from the operator's, because the operator Deployment's
selector (name and instance, immutable) would otherwise match the collector's pods too.
*/}}
{{- define "kaizen.collector.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-collector" (include "kaizen.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on the collector's objects. */}}
{{- define "kaizen.collector.labels" -}}
{{ include "kaizen.commonLabels" . }}
{{ include "kaizen.collector.selectorLabels" . }}
app.kubernetes.io/component: collector
{{- end }}

{{/* The Secret holding the collector's tokens file: the one the chart generates, or an existing one. */}}
{{- define "kaizen.collector.tokensSecretName" -}}
{{- $generated := printf "%s-collector-tokens" (include "kaizen.fullname" . | trunc 46 | trimSuffix "-") }}
{{- default $generated .Values.collector.auth.existingSecret }}
{{- end }}

{{/*
The Secret with the operator's collector token under the key "token", in the shape an ImprovementLoop's
spec.feedback.tokenSecretRef names (a DNS label, in the loop's own namespace).
*/}}
{{- define "kaizen.collector.operatorTokenSecretName" -}}
{{- printf "%s-collector-token" (include "kaizen.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{/*
The namespaces that get a copy of the operator's token Secret, as a JSON list: the release's, the watched ones and
those listed.
*/}}
{{- define "kaizen.collector.operatorTokenNamespaces" -}}
{{- $listed := .Values.collector.auth.operatorTokenNamespaces }}
{{- concat (list .Release.Namespace) .Values.watchNamespaces $listed | uniq | toJson }}
{{- end }}

{{/* "sqlite" (the chart's volume) or "postgresql" (a URL in values or in an existing Secret). */}}
{{- define "kaizen.collector.database" -}}
{{- if or .Values.collector.database.url .Values.collector.database.existingSecret }}postgresql{{ else }}sqlite{{ end }}
{{- end }}

{{/* The in-cluster base URL of the collector, as an ImprovementLoop's spec.feedback.collectorURL takes it. */}}
{{- define "kaizen.collector.url" -}}
{{- $service := include "kaizen.collector.fullname" . }}
{{- printf "http://%s.%s.svc:%v" $service .Release.Namespace .Values.collector.service.port }}
{{- end }}

{{/* Values that render but cannot work: fail the install with what to change. */}}
{{- define "kaizen.collector.validate" -}}
{{- $db := .Values.collector.database }}
{{- if and $db.url $db.existingSecret }}
{{- fail (cat "collector.database.url and collector.database.existingSecret are both set: set only one"
  "(the existing Secret keeps the password out of the values)") }}
{{- end }}
{{- if and $db.url (not (regexMatch "^postgresql(\\+[a-z0-9]+)?://" $db.url)) }}
{{- fail (cat "collector.database.url must be a postgresql:// URL;"
  "leave it empty to keep the collector's data in SQLite on the chart's volume") }}
{{- end }}
{{- $replicas := int .Values.collector.replicaCount }}
{{- if and (eq (include "kaizen.collector.database" .) "sqlite") (gt $replicas 1) }}
{{- fail (cat (printf "collector.replicaCount is %d," $replicas)
  "but with SQLite only one pod may write the database (on a ReadWriteOnce volume): set collector.replicaCount=1,"
  "or give the collector PostgreSQL (collector.database.url or collector.database.existingSecret)"
  "to run more replicas") }}
{{- end }}
{{- end }}
