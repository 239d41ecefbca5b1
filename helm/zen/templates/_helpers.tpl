{{/* Chart name, truncated to the 63 characters that DNS labels allow. */}}
{{- define "zen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart> unless the release already contains it. */}}
{{- define "zen.fullname" -}}
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

{{- define "zen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zen.labels" -}}
helm.sh/chart: {{ include "zen.chart" . }}
{{ include "zen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zen
{{- end }}

{{- define "zen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "zen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "zen.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Checks that make a broken release fail at render time instead of at 3 a.m.
*/}}
{{- define "zen.validate" -}}
{{- if not .Values.database.existingSecret }}
{{- fail "database.existingSecret is required: a Secret holding the PostgreSQL URL (ZEN_DATABASE_URL)" }}
{{- end }}
{{- if not .Values.pki.existingSecret }}
{{- fail "pki.existingSecret is required: a Secret with ca.crt, server.crt and server.key" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.shutdownGraceSeconds) (int .Values.preStopSleepSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed shutdownGraceSeconds (%v) + preStopSleepSeconds (%v), or Kubernetes kills pods mid-drain" .Values.terminationGracePeriodSeconds .Values.shutdownGraceSeconds .Values.preStopSleepSeconds) }}
{{- end }}
{{- if not (has .Values.environment (list "production" "development")) }}
{{- fail "environment must be production or development" }}
{{- end }}
{{- if and (eq .Values.environment "production") (not .Values.webhooks.existingSecret) }}
{{- fail "webhooks.existingSecret is required in production: a Secret with the webhook secret keys (zen keys webhook-key)" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- end }}

{{/*
The environment shared by the server and the migration Job: where the database is, which
environment this is, how to log. Addresses and TLS files are the server's alone.
*/}}
{{- define "zen.commonEnv" -}}
- name: ZEN_ENV
  value: {{ .Values.environment | quote }}
- name: ZEN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: ZEN_DATA_DIR
  value: /var/lib/zen
- name: ZEN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- if .Values.redis.existingSecret }}
- name: ZEN_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.urlKey }}
{{- else if .Values.redis.url }}
- name: ZEN_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- if .Values.webhooks.existingSecret }}
- name: ZEN_WEBHOOK_SECRET_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.webhooks.existingSecret }}
      key: {{ .Values.webhooks.keysKey }}
{{- if .Values.webhooks.legacyAgentKeyKey }}
- name: ZEN_LEGACY_AGENT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.webhooks.existingSecret }}
      key: {{ .Values.webhooks.legacyAgentKeyKey }}
{{- end }}
{{- end }}
- name: ZEN_TLS_CA_CERT
  value: {{ printf "%s/ca.crt" .Values.pki.mountPath | quote }}
- name: ZEN_TLS_SERVER_CERT
  value: {{ printf "%s/server.crt" .Values.pki.mountPath | quote }}
- name: ZEN_TLS_SERVER_KEY
  value: {{ printf "%s/server.key" .Values.pki.mountPath | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by the server and the migration Job. */}}
{{- define "zen.volumes" -}}
- name: pki
  secret:
    secretName: {{ .Values.pki.existingSecret }}
    defaultMode: {{ .Values.pki.defaultMode }}
    items:
      - key: ca.crt
        path: ca.crt
      - key: server.crt
        path: server.crt
      - key: server.key
        path: server.key
- name: data
  emptyDir:
    sizeLimit: 64Mi
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "zen.volumeMounts" -}}
- name: pki
  mountPath: {{ .Values.pki.mountPath }}
  readOnly: true
- name: data
  mountPath: /var/lib/zen
- name: tmp
  mountPath: /tmp
{{- end }}
