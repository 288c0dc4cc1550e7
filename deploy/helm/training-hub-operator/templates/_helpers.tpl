{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "training-hub-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "training-hub-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "training-hub-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "training-hub-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects of two releases must not collide: prefix with the namespace too. */}}
{{- define "training-hub-operator.clusterObjectName" -}}
{{- printf "%s-%s" .Release.Namespace (include "training-hub-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}
{{- define "training-hub-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "training-hub-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "training-hub-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "training-hub-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: training-hub
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "training-hub-operator.leaseName" -}}
{{- default (include "training-hub-operator.fullname" .) .Values.ha.leaseName -}}
{{- end -}}

{{- define "training-hub-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Combinations of values a JSON schema cannot explain well: fail with the fix in the message. */}}
{{- define "training-hub-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) -}}
{{- fail "watchNamespaces: list at least one namespace when rbac.scope is \"namespaced\" (the operator gets a Role in each and nothing cluster-wide), or set rbac.scope=cluster" -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "cluster") (not (empty .Values.watchNamespaces)) -}}
{{- fail "watchNamespaces: only used with rbac.scope=namespaced; with rbac.scope=cluster the operator runs SFTJobs in every namespace (remove watchNamespaces or set rbac.scope=namespaced)" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.ha.enabled) -}}
{{- fail (printf "replicaCount: %d replicas without ha.enabled=true would run SFTJobs twice; set ha.enabled=true (leader election keeps one replica acting) or replicaCount=1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and .Values.ha.enabled (le (float64 .Values.ha.leaseDuration) (float64 .Values.ha.renewDeadline)) -}}
{{- fail (printf "ha.renewDeadline (%v) must be less than ha.leaseDuration (%v): the leader must stop acting before a standby may take over" .Values.ha.renewDeadline .Values.ha.leaseDuration) -}}
{{- end -}}
{{- if and .Values.ha.enabled (le (float64 .Values.ha.renewDeadline) (mulf 1.2 (float64 .Values.ha.retryPeriod))) -}}
{{- fail (printf "ha.renewDeadline (%v) must be greater than 1.2 x ha.retryPeriod (%v): the leader needs more than one try to renew" .Values.ha.renewDeadline .Values.ha.retryPeriod) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled: needs metrics.enabled=true (the ServiceMonitor scrapes the metrics Service)" -}}
{{- end -}}
{{- end -}}

{{/*
The RBAC rules for namespaced objects, shared by the ClusterRole and the per-namespace Roles.
Exactly the calls the operator makes (sftjob_operator/kube.py, kopf's watches), nothing more:
tests/cluster/test_helm.py runs the operator as this ServiceAccount end to end and checks the
`kubectl auth can-i` matrix, so a missing or an extra verb fails there.
*/}}
{{- define "training-hub-operator.namespacedRules" -}}
# SFTJobs: kopf lists and watches them, the reconciler reads one, and deletes it after ttlSecondsAfterFinished.
# No create/update/patch: the operator never writes into spec (GitOps: no drift).
- apiGroups: [training-hub.io]
  resources: [sftjobs]
  verbs: [get, list, watch, delete]
- apiGroups: [training-hub.io]
  resources: [sftjobs/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
- apiGroups: [training-hub.io]
  resources: [sftjobs/finalizers]
  verbs: [update]
# The gang: one pod per node; restarts delete and recreate them; the reconciler lists them, kopf watches them.
- apiGroups: [""]
  resources: [pods]
  verbs: [create, delete, list, watch]
# Progress: the tail of rank 0's log.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# The rank-0 headless Service and the params ConfigMap (both deleted by the garbage collector with the job).
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, patch]
# Events about the jobs (the reconciler's and kopf's).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Kueue (docs/operator.md, "Kueue"): read why it holds a gang; delete the Workload of a gang that never got a node
# when the gang ends. Harmless where Kueue is not installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, delete]
{{- end -}}
