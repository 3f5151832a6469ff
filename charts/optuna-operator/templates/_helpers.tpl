{{/* Names, labels and the few decisions several templates share. */}}

{{- define "optuna-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "optuna-operator.fullname" -}}
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

{{- define "optuna-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "optuna-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: optuna-operator
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "optuna-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optuna-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "optuna-operator.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "optuna-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The bundled PostgreSQL's credentials Secret (keys `password` and `url`): the user's
(auth.existingSecret), or the chart's own from auth.password. The chart never generates a
password: one generated while rendering changes on every `helm template` (Argo CD), while the
database keeps the first. */}}
{{- define "optuna-operator.postgresql.secretName" -}}
{{- $auth := .Values.postgresql.auth }}
{{- if .Values.storage.existingSecret.name }}
{{- fail "set either postgresql.enabled or storage.existingSecret.name, not both" }}
{{- else if $auth.existingSecret }}
{{- $auth.existingSecret }}
{{- else if $auth.password }}
{{- include "optuna-operator.postgresql.fullname" . }}
{{- else }}
{{- fail (printf "postgresql.enabled needs postgresql.auth.existingSecret, a Secret in the release namespace with keys `password` and `url` (e.g. PW=$(openssl rand -hex 24); kubectl create secret generic optuna-postgresql -n %s --from-literal=password=$PW --from-literal=url=postgresql+psycopg2://%s:$PW@%s.%s.svc:5432/%s), or postgresql.auth.password. The chart does not generate one: a password made while rendering would change on every helm template (Argo CD)." .Release.Namespace $auth.username (include "optuna-operator.postgresql.fullname" .) .Release.Namespace $auth.database) }}
{{- end }}
{{- end }}

{{- define "optuna-operator.postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optuna-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: postgresql
{{- end }}

{{- define "optuna-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "optuna-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; tag defaults to appVersion. */}}
{{- define "optuna-operator.image" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* `name:key` of the default storage Secret in the release namespace, or empty. */}}
{{- define "optuna-operator.defaultStorageSecret" -}}
{{- if and .Values.postgresql.enabled .Values.storage.existingSecret.name }}
{{- fail "set either postgresql.enabled or storage.existingSecret.name, not both" }}
{{- else if .Values.postgresql.enabled }}
{{- printf "%s:url" (include "optuna-operator.postgresql.secretName" .) }}
{{- else if .Values.storage.existingSecret.name }}
{{- printf "%s:%s" .Values.storage.existingSecret.name .Values.storage.existingSecret.key }}
{{- end }}
{{- end }}

{{- define "optuna-operator.defaultStorageSecretName" -}}
{{- $ref := include "optuna-operator.defaultStorageSecret" . }}
{{- if $ref }}{{ (splitList ":" $ref) | first }}{{ end }}
{{- end }}

{{- define "optuna-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without it every replica acts on every study" }}
{{- end }}
{{- $np := .Values.metrics.networkPolicy }}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled $np.enabled (not $np.allowedFrom) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.networkPolicy.allowedFrom, the peers Prometheus scrapes from (e.g. --set-json 'metrics.networkPolicy.allowedFrom=[{\"namespaceSelector\":{\"matchLabels\":{\"kubernetes.io/metadata.name\":\"monitoring\"}}}]'): the operator pod's NetworkPolicy admits nobody else. Or metrics.networkPolicy.enabled=false." }}
{{- end }}
{{- end }}

{{/* The namespaces the operator serves, as a JSON list (read it with fromJsonArray); [] in
cluster-wide mode. Every template decides namespaced or cluster-wide from this alone. */}}
{{- define "optuna-operator.servedNamespaces" -}}
{{- if .Values.clusterWide }}
{{- list | toJson }}
{{- else if not .Values.watchNamespaces }}
{{- fail "watchNamespaces is empty: list the namespaces whose studies the operator serves (it gets a Role in each and nothing elsewhere), e.g. --set 'watchNamespaces={team-a,team-b}'; or set clusterWide=true to serve every namespace with a ClusterRole (Secrets, Jobs and Deployments in every namespace, kube-system included: see values.yaml)" }}
{{- else }}
{{- range .Values.watchNamespaces }}
{{- if has . (list "kube-system" "kube-public" "kube-node-lease") }}
{{- fail (printf "watchNamespaces lists %s: the operator never serves a system namespace (it would get Secrets and Jobs there)" .) }}
{{- end }}
{{- end }}
{{- toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}

{{/* What the operator does in a namespace with studies (read from kube.py, reconcile.py and
kopf): watch and patch studies and their status, set owner references that block deletion
(finalizers), manage and watch worker Jobs (a Job change refreshes its study), dashboard Deployments, Services
and NetworkPolicies (one per dashboard, admitting dashboard.allowedFrom), read storage Secrets and
write the `<study>-storage` copies (server-side apply: create + patch), list worker pods for
their termination messages, post events. Nothing else: no pods/exec, no Secret list. */}}
{{- define "optuna-operator.studyRules" -}}
- apiGroups: [tuning.optuna-operator.io]
  resources: [tuningstudies]
  verbs: [get, list, watch, patch]
- apiGroups: [tuning.optuna-operator.io]
  resources: [tuningstudies/status]
  verbs: [get, patch]
- apiGroups: [tuning.optuna-operator.io]
  resources: [tuningstudies/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# Kueue, for studies whose workers wait in a queue: why a Job waits (its Workload) and the
# ClusterQueue behind a LocalQueue. Harmless where Kueue is not installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads, localqueues]
  verbs: [get, list]
{{- end }}

{{- define "optuna-operator.pgbouncer.fullname" -}}
{{- printf "%s-pgbouncer" (include "optuna-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "optuna-operator.pgbouncer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optuna-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: pgbouncer
{{- end }}

{{/* host:port of the PgBouncer Service, as the workers reach it. */}}
{{- define "optuna-operator.pgbouncer.address" -}}
{{- if .Values.pgbouncer.workerAddress }}
{{- .Values.pgbouncer.workerAddress }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "optuna-operator.pgbouncer.fullname" .) .Release.Namespace (int .Values.pgbouncer.port) }}
{{- end }}
{{- end }}

{{/* The PostgreSQL server PgBouncer forwards to: pgbouncer.database.host, else the bundled one. */}}
{{- define "optuna-operator.pgbouncer.serverHost" -}}
{{- if .Values.pgbouncer.database.host }}
{{- .Values.pgbouncer.database.host }}
{{- else if .Values.postgresql.enabled }}
{{- printf "%s.%s.svc" (include "optuna-operator.postgresql.fullname" .) .Release.Namespace }}
{{- else }}
{{- fail "pgbouncer.enabled needs pgbouncer.database.host (the host of the database in storage.existingSecret's URL) unless postgresql.enabled" }}
{{- end }}
{{- end }}

{{/* Secret with key `password` of PgBouncer's auth role (optuna_pgbouncer). */}}
{{- define "optuna-operator.pgbouncer.secretName" -}}
{{- $auth := .Values.pgbouncer.auth }}
{{- if $auth.existingSecret }}
{{- $auth.existingSecret }}
{{- else if $auth.password }}
{{- include "optuna-operator.pgbouncer.fullname" . }}
{{- else }}
{{- fail (printf "pgbouncer.enabled needs pgbouncer.auth.existingSecret, a Secret in the release namespace with key `password` (the password of PostgreSQL role optuna_pgbouncer that files/pgbouncer-auth.sql creates; e.g. kubectl create secret generic optuna-pgbouncer -n %s --from-literal=password=$(openssl rand -hex 24)), or pgbouncer.auth.password" .Release.Namespace) }}
{{- end }}
{{- end }}
