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

{{/* Where the chart mounts configuration and secrets in every Symbi container. */}}
{{- define "symbi.paths" -}}
config: /etc/symbi/config
nats: /etc/symbi/nats
policies: /etc/symbi/policies
auditKey: /etc/symbi/audit
{{- end -}}

{{/* NATS authorization is on: check the Secret is named. */}}
{{- define "symbi.natsAuthSecret" -}}
{{- required "nats.auth.existingSecret is required when nats.auth.enabled is true (make it with `symbi nats-auth init`)" .Values.nats.auth.existingSecret -}}
{{- end -}}

{{/* The Secret holding the API bootstrap admin key, or "" when there is none. */}}
{{- define "symbi.apiAdminSecret" -}}
{{- if .Values.apiAdminKey.existingSecret -}}
{{- .Values.apiAdminKey.existingSecret -}}
{{- else if .Values.apiAdminKey.create -}}
{{- printf "%s-api-admin" (include "symbi.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Environment of one Symbi container: (dict "root" $ "name" "policy"). */}}
{{- define "symbi.env" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $paths := include "symbi.paths" $root | fromYaml -}}
- name: SYMBI_CONFIG_PATH
  value: {{ printf "%s/symbi.toml" $paths.config | quote }}
- name: SYMBI_STATE_DIR
  value: /var/lib/symbi
- name: SYMBI_NATS_URL
  value: {{ include "symbi.natsUrl" $root | quote }}
- name: SYMBI_REDIS_URL
  value: {{ include "symbi.redisUrl" $root | quote }}
- name: QDRANT_URL
  value: {{ include "symbi.qdrantUrl" $root | quote }}
- name: SYMBI_POLICY_ADDR
  value: {{ printf "%s-policy:%d" (include "symbi.fullname" $root) (int $root.Values.ports.policyGrpc) | quote }}
- name: SYMBI_POLICY_HOST
  value: "0.0.0.0"
- name: SYMBI_POLICY_PORT
  value: {{ $root.Values.ports.policyGrpc | quote }}
- name: SYMBI_API_HOST
  value: "0.0.0.0"
- name: SYMBI_API_PORT
  value: {{ $root.Values.ports.api | quote }}
- name: SYMBI_METRICS_HOST
  value: "0.0.0.0"
- name: SYMBI_METRICS_PORT
  value: {{ $root.Values.ports.metrics | quote }}
{{- if $root.Values.nats.auth.enabled }}
- name: SYMBI_NATS_CREDENTIALS
  value: {{ printf "%s/service.creds" $paths.nats | quote }}
{{- if eq $name "lifecycle" }}
- name: SYMBI_MESSAGING_ISSUER_FILE
  value: {{ printf "%s/issuer.json" $paths.nats | quote }}
{{- end }}
{{- end }}
{{- if and (eq $name "policy") $root.Values.policies }}
- name: SYMBI_POLICY_DIR
  value: {{ $paths.policies | quote }}
{{- end }}
{{- if and (eq $name "audit") $root.Values.auditSigningKey.existingSecret }}
- name: SYMBI_AUDIT_SIGNING_KEY_FILE
  value: {{ printf "%s/%s" $paths.auditKey $root.Values.auditSigningKey.secretKey | quote }}
{{- end }}
{{- if eq $name "context" }}
{{- if $root.Values.openai.existingSecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.openai.existingSecret }}
      key: {{ $root.Values.openai.secretKey }}
{{- end }}
{{- if $root.Values.qdrant.apiKey.existingSecret }}
- name: QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.qdrant.apiKey.existingSecret }}
      key: {{ $root.Values.qdrant.apiKey.secretKey }}
{{- end }}
{{- end }}
{{- if and (eq $name "api") (include "symbi.apiAdminSecret" $root) }}
- name: SYMBI_API_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "symbi.apiAdminSecret" $root }}
      key: {{ $root.Values.apiAdminKey.secretKey }}
{{- end }}
{{- end -}}

{{/* Volume mounts of one Symbi container: (dict "root" $ "name" "policy"). */}}
{{- define "symbi.volumeMounts" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $paths := include "symbi.paths" $root | fromYaml -}}
- name: config
  mountPath: {{ $paths.config }}
  readOnly: true
- name: state
  mountPath: /var/lib/symbi
- name: tmp
  mountPath: /tmp
{{- if $root.Values.nats.auth.enabled }}
- name: nats-auth
  mountPath: {{ $paths.nats }}
  readOnly: true
{{- end }}
{{- if and (eq $name "policy") $root.Values.policies }}
- name: policies
  mountPath: {{ $paths.policies }}
  readOnly: true
{{- end }}
{{- if and (eq $name "audit") $root.Values.auditSigningKey.existingSecret }}
- name: audit-signing-key
  mountPath: {{ $paths.auditKey }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of one Symbi pod (besides state): (dict "root" $ "name" "policy"). */}}
{{- define "symbi.volumes" -}}
{{- $root := .root -}}
{{- $name := .name -}}
- name: config
  configMap:
    name: {{ include "symbi.fullname" $root }}-config
- name: tmp
  emptyDir: {}
{{- if $root.Values.nats.auth.enabled }}
- name: nats-auth
  secret:
    secretName: {{ include "symbi.natsAuthSecret" $root }}
    defaultMode: 0440
    items:
      - key: service.creds
        path: service.creds
      {{- if eq $name "lifecycle" }}
      - key: issuer.json
        path: issuer.json
      {{- end }}
{{- end }}
{{- if and (eq $name "policy") $root.Values.policies }}
- name: policies
  configMap:
    name: {{ include "symbi.fullname" $root }}-policies
{{- end }}
{{- if and (eq $name "audit") $root.Values.auditSigningKey.existingSecret }}
- name: audit-signing-key
  secret:
    secretName: {{ $root.Values.auditSigningKey.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.auditSigningKey.secretKey }}
        path: {{ $root.Values.auditSigningKey.secretKey }}
{{- end }}
{{- end -}}
