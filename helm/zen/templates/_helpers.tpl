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
{{- if and (not .Values.certManager.enabled) (not .Values.pki.existingSecret) }}
{{- fail "pki.existingSecret is required: a Secret with ca.crt, tls.crt and tls.key (or certManager.enabled)" }}
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
  value: {{ printf "%s/server/ca.crt" .Values.pki.mountPath | quote }}
- name: ZEN_TLS_SERVER_CERT
  value: {{ printf "%s/server/tls.crt" .Values.pki.mountPath | quote }}
- name: ZEN_TLS_SERVER_KEY
  value: {{ printf "%s/server/tls.key" .Values.pki.mountPath | quote }}
- name: ZEN_GATEWAY_CERT
  value: {{ printf "%s/gateway/tls.crt" .Values.pki.mountPath | quote }}
- name: ZEN_GATEWAY_KEY
  value: {{ printf "%s/gateway/tls.key" .Values.pki.mountPath | quote }}
- name: ZEN_GATEWAY_SERVER_NAME
  value: {{ .Values.pki.gatewayServerName | default (include "zen.fullname" .) | quote }}
{{- if .Values.pki.caKey.enabled }}
- name: ZEN_TLS_CA_KEY
  value: {{ printf "%s/ca/tls.key" .Values.pki.mountPath | quote }}
{{- end }}
- name: ZEN_JWT_KEYS_DIR
  value: /etc/zen/jwt
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by the server and the migration Job. */}}
{{- define "zen.pkiSecret" -}}
{{- $ctx := index . 0 -}}{{- $which := index . 1 -}}
{{- if $ctx.Values.certManager.enabled -}}
{{- printf "%s-%s-tls" (include "zen.fullname" $ctx) $which -}}
{{- else if eq $which "server" -}}{{- $ctx.Values.pki.existingSecret -}}
{{- else if eq $which "gateway" -}}{{- $ctx.Values.pki.gatewaySecret -}}
{{- else -}}{{- $ctx.Values.pki.caKey.existingSecret -}}
{{- end -}}
{{- end }}

{{/* Volumes shared by the server and the migration Job. Secrets use cert-manager's layout
     (ca.crt, tls.crt, tls.key) whether cert-manager made them or you did. */}}
{{- define "zen.volumes" -}}
- name: pki-server
  secret:
    secretName: {{ include "zen.pkiSecret" (list . "server") }}
    defaultMode: {{ .Values.pki.defaultMode }}
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
- name: pki-gateway
  secret:
    secretName: {{ include "zen.pkiSecret" (list . "gateway") }}
    defaultMode: {{ .Values.pki.defaultMode }}
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- if .Values.pki.caKey.enabled }}
- name: pki-ca
  secret:
    secretName: {{ include "zen.pkiSecret" (list . "ca") }}
    defaultMode: {{ .Values.pki.defaultMode }}
    items:
      - {key: tls.key, path: tls.key}
{{- end }}
- name: jwt
  secret:
    secretName: {{ .Values.jwt.existingSecret }}
    defaultMode: {{ .Values.pki.defaultMode }}
- name: data
  emptyDir:
    sizeLimit: 64Mi
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "zen.volumeMounts" -}}
- name: pki-server
  mountPath: {{ .Values.pki.mountPath }}/server
  readOnly: true
- name: pki-gateway
  mountPath: {{ .Values.pki.mountPath }}/gateway
  readOnly: true
{{- if .Values.pki.caKey.enabled }}
- name: pki-ca
  mountPath: {{ .Values.pki.mountPath }}/ca
  readOnly: true
{{- end }}
- name: jwt
  mountPath: /etc/zen/jwt
  readOnly: true
- name: data
  mountPath: /var/lib/zen
- name: tmp
  mountPath: /tmp
{{- end }}
