{{/*
Chart name (nameOverride wins), truncated to a DNS label.
*/}}
{{- define "kindex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else the release name when it
already contains the chart name, else <release>-<chart>. With the documented
release name `kindex` the operator objects are called `kindex-operator`.
*/}}
{{- define "kindex.fullname" -}}
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

{{/* Name of the operator's objects (Deployment, roles, ...). */}}
{{- define "kindex.operatorName" -}}
{{- printf "%s-operator" (include "kindex.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kindex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector of the operator pods. The name is `<chart>-operator`, never `kindex`:
index pods are selected by `app.kubernetes.io/name: kindex` +
`app.kubernetes.io/instance: <index>`, and an index named like the release must
not select the operator.
*/}}
{{- define "kindex.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-operator" (include "kindex.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "kindex.labels" -}}
{{ include "kindex.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kindex
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "kindex.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kindex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kindex.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, the tag
defaults to the chart's appVersion (which follows the workspace version).
*/}}
{{- define "kindex.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end }}

{{- define "kindex.operatorImage" -}}
{{- include "kindex.image" (list .Values.operator.image .) }}
{{- end }}

{{- define "kindex.nodeImage" -}}
{{- include "kindex.image" (list .Values.node.image .) }}
{{- end }}

{{/* Name of the Lease the operator's leader election uses (fixed by the binary). */}}
{{- define "kindex.leaseName" -}}kindex-operator{{- end }}

{{/*
The rules the operator needs on the objects it manages, in every namespace it
watches (a ClusterRole by default, a Role in `watchNamespace` otherwise).
Least privilege: Secrets only read and written by name (the peer TLS CA and
certificate of indexes with spec.peerTls; never listed, watched or deleted: owner
references remove them), no PVCs (the StatefulSet retention policy removes
them), no nodes, no wildcards. Keep in sync with deploy/rbac.yaml (checked by
e2e/chart-tests.sh).
*/}}
{{- define "kindex.operatorRules" -}}
# The VectorIndex objects: read, watch, and patch (finalizers / annotations).
- apiGroups: ["kindex.dev"]
  resources: ["vectorindexes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kindex.dev"]
  resources: ["vectorindexes/status"]
  verbs: ["get", "patch", "update"]
# Owned objects, server-side applied with field manager kindex-operator; orphans deleted.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# One NetworkPolicy per index (Raft and admin ports: the index's pods and the operator).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Peer mTLS (spec.peerTls): the index's CA and certificate Secrets, by name only.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Index pods: observed, and deleted one by one for rolling restarts (OnDelete StatefulSets).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# Kubernetes Events about VectorIndex objects.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
