{{/* Names and labels. */}}
{{- define "symbi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "symbi.labels" -}}
app.kubernetes.io/part-of: symbi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "policy"). */}}
{{- define "symbi.selectorLabels" -}}
app.kubernetes.io/name: symbi
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "symbi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "symbi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "symbi.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Connection URLs: bundled infrastructure or the external URL (required then). */}}
{{- define "symbi.natsUrl" -}}
{{- if .Values.nats.bundled -}}
{{- printf "nats://%s-nats:4222" (include "symbi.fullname" .) -}}
{{- else -}}
{{- required "nats.url is required when nats.bundled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "symbi.redisUrl" -}}
{{- if .Values.redis.bundled -}}
{{- printf "redis://%s-redis:6379/0" (include "symbi.fullname" .) -}}
{{- else -}}
{{- required "redis.url is required when redis.bundled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "symbi.qdrantUrl" -}}
{{- if .Values.qdrant.bundled -}}
{{- printf "http://%s-qdrant:6333" (include "symbi.fullname" .) -}}
{{- else -}}
{{- required "qdrant.url is required when qdrant.bundled is false" .Values.qdrant.url -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every Symbi container. */}}
{{- define "symbi.env" -}}
- name: SYMBI_CONFIG_PATH
  value: /etc/symbi/symbi.toml
- name: SYMBI_STATE_DIR
  value: /var/lib/symbi
- name: SYMBI_NATS_URL
  value: {{ include "symbi.natsUrl" . | quote }}
- name: SYMBI_REDIS_URL
  value: {{ include "symbi.redisUrl" . | quote }}
- name: QDRANT_URL
  value: {{ include "symbi.qdrantUrl" . | quote }}
- name: SYMBI_POLICY_ADDR
  value: {{ printf "%s-policy:%d" (include "symbi.fullname" .) (int .Values.ports.policyGrpc) | quote }}
- name: SYMBI_POLICY_HOST
  value: "0.0.0.0"
- name: SYMBI_POLICY_PORT
  value: {{ .Values.ports.policyGrpc | quote }}
- name: SYMBI_API_HOST
  value: "0.0.0.0"
- name: SYMBI_API_PORT
  value: {{ .Values.ports.api | quote }}
- name: SYMBI_METRICS_HOST
  value: "0.0.0.0"
- name: SYMBI_METRICS_PORT
  value: {{ .Values.ports.metrics | quote }}
{{- if .Values.openai.existingSecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.openai.existingSecret }}
      key: {{ .Values.openai.secretKey }}
{{- end }}
{{- end -}}
