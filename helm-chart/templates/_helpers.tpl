{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "taskevents.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taskevents.labels" -}}
app.kubernetes.io/part-of: taskevents
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the pods of one component: (dict "root" $ "name" "audit-log-service") */}}
{{- define "taskevents.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* One service's settings: the defaults merged with its own entry. (dict "root" $ "key" "audit") */}}
{{- define "taskevents.service" -}}
{{- $own := index .root.Values.services .key -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy $own)) -}}
{{- end -}}

{{- define "taskevents.image" -}}
{{- $image := .root.Values.image -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion -}}
{{- if $image.registry -}}
{{- printf "%s/%s/%s:%s" $image.registry $image.repository .appId $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $image.repository .appId $tag -}}
{{- end -}}
{{- end -}}

{{- define "taskevents.serviceAccountName" -}}
{{- printf "%s-%s" (include "taskevents.fullname" .root) .appId | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secrets ---------------------------------------------------------------------------- */}}

{{- define "taskevents.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "taskevents.fullname" .)) -}}
{{- end -}}

{{- define "taskevents.appTokenSecret" -}}
{{- .Values.dapr.appTokenSecret | default (printf "%s-dapr-app-token" (include "taskevents.fullname" .)) -}}
{{- end -}}

{{- define "taskevents.apiTokenSecret" -}}
{{- .Values.dapr.apiTokenSecret | default (printf "%s-dapr-api-token" (include "taskevents.fullname" .)) -}}
{{- end -}}

{{/* Infrastructure addresses ------------------------------------------------------------ */}}

{{- define "taskevents.kafkaBrokers" -}}
{{- if .Values.redpanda.enabled -}}
{{- printf "%s-redpanda:%d" (include "taskevents.fullname" .) (int .Values.kafka.port) -}}
{{- else -}}
{{- required "kafka.brokers is required when redpanda.enabled is false" .Values.kafka.brokers -}}
{{- end -}}
{{- end -}}

{{- define "taskevents.postgresHost" -}}
{{- printf "%s-postgresql" (include "taskevents.fullname" .) -}}
{{- end -}}

{{- define "taskevents.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- $pg := .Values.postgresql -}}
{{- printf "postgresql://%s:%s@%s:%d/%s" $pg.username (required "postgresql.password is required with the in-chart Postgres" $pg.password) (include "taskevents.postgresHost" .) (int .Values.postgres.port) $pg.database -}}
{{- else -}}
{{- required "secrets.databaseUrl (or secrets.existingSecret with the key database-url) is required without the in-chart Postgres" .Values.secrets.databaseUrl -}}
{{- end -}}
{{- end -}}

{{- define "taskevents.smtpHost" -}}
{{- if .Values.mailpit.enabled -}}
{{- printf "%s-mailpit" (include "taskevents.fullname" .) -}}
{{- else -}}
{{- required "smtp.host is required when mailpit.enabled is false" .Values.smtp.host -}}
{{- end -}}
{{- end -}}

{{- define "taskevents.smtpPort" -}}
{{- if .Values.mailpit.enabled -}}1025{{- else -}}{{ .Values.smtp.port }}{{- end -}}
{{- end -}}

{{/* Dapr component metadata that depends on the environment ------------------------------ */}}

{{/* Kafka authentication and TLS, as pubsub.kafka metadata items: the SASL credentials and
     the broker's CA from an existing Secret (kafka.saslSecret, kafka.tls.caSecret) or from the
     chart's Secret (kafka-sasl-password, kafka-ca-cert). */}}
{{- define "taskevents.kafkaAuthMetadata" -}}
{{- $kafka := .Values.kafka -}}
{{- $sasl := $kafka.saslSecret -}}
- name: authType
  value: {{ $kafka.authType | quote }}
{{- if eq $kafka.authType "password" }}
{{- if $sasl.name }}
- name: saslUsername
  secretKeyRef: {name: {{ $sasl.name }}, key: {{ $sasl.usernameKey }}}
- name: saslPassword
  secretKeyRef: {name: {{ $sasl.name }}, key: {{ $sasl.passwordKey }}}
{{- else }}
- name: saslUsername
  value: {{ required "kafka.saslUsername (or kafka.saslSecret.name) is required with authType password" $kafka.saslUsername | quote }}
- name: saslPassword
  secretKeyRef: {name: {{ include "taskevents.secretName" . }}, key: kafka-sasl-password}
{{- end }}
{{- /* Dapr's names: SHA-512, SHA-256; anything else it takes for PLAIN. */}}
- name: saslMechanism
  value: {{ $kafka.saslMechanism | trimPrefix "SCRAM-" | quote }}
{{- end }}
{{- if ne $kafka.authType "none" }}
- name: disableTls
  value: {{ (not $kafka.tls.enabled) | toString | quote }}
{{- end }}
{{- if $kafka.tls.caSecret.name }}
- name: caCert
  secretKeyRef: {name: {{ $kafka.tls.caSecret.name }}, key: {{ $kafka.tls.caSecret.key }}}
{{- else if or $kafka.tls.caCert (eq $kafka.authType "certificate") }}
- name: caCert
  secretKeyRef: {name: {{ include "taskevents.secretName" . }}, key: kafka-ca-cert}
{{- end }}
{{- end -}}

{{/* Environment of a container that reads Kafka itself (the console; taskevents.kafka):
     the same authentication and CA as the pubsub components. authType certificate/mtls are
     the components' only: such a container gets SSL with the CA. */}}
{{- define "taskevents.kafkaClientEnv" -}}
{{- $kafka := .Values.kafka -}}
{{- $sasl := $kafka.saslSecret -}}
{{- if eq $kafka.authType "password" }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ ternary "SASL_SSL" "SASL_PLAINTEXT" $kafka.tls.enabled | quote }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $kafka.saslMechanism | quote }}
{{- if $sasl.name }}
- name: KAFKA_SASL_USERNAME
  valueFrom: {secretKeyRef: {name: {{ $sasl.name }}, key: {{ $sasl.usernameKey }}}}
- name: KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $sasl.name }}, key: {{ $sasl.passwordKey }}}}
{{- else }}
- name: KAFKA_SASL_USERNAME
  value: {{ $kafka.saslUsername | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "taskevents.secretName" . }}, key: kafka-sasl-password}}
{{- end }}
{{- else if ne $kafka.authType "none" }}
- name: KAFKA_SECURITY_PROTOCOL
  value: SSL
{{- end }}
{{- if include "taskevents.kafkaCaVolume" . }}
- name: KAFKA_CA_FILE
  value: /etc/taskevents/kafka-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "taskevents.kafkaCaVolume" -}}
{{- $tls := .Values.kafka.tls -}}
{{- if $tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $tls.caSecret.name }}
    items:
      - {key: {{ $tls.caSecret.key }}, path: ca.crt}
{{- else if or $tls.caCert (eq .Values.kafka.authType "certificate") }}
- name: kafka-ca
  secret:
    secretName: {{ include "taskevents.secretName" . }}
    items:
      - {key: kafka-ca-cert, path: ca.crt}
{{- end }}
{{- end -}}

{{- define "taskevents.kafkaCaVolumeMount" -}}
{{- if include "taskevents.kafkaCaVolume" . }}
- {name: kafka-ca, mountPath: /etc/taskevents/kafka-ca, readOnly: true}
{{- end }}
{{- end -}}

{{/* Postgres with sslmode=verify-full: the server's CA (postgres.tls.caSecret) is mounted at
     this path in the apps that connect directly and in the sidecars of the state store. */}}
{{- define "taskevents.postgresCaDir" -}}/etc/taskevents/postgres-ca{{- end -}}
{{- define "taskevents.postgresCaFile" -}}{{ include "taskevents.postgresCaDir" . }}/ca.crt{{- end -}}

{{/* The state store's CA file, as state.postgresql metadata (empty without postgres.tls). */}}
{{- define "taskevents.postgresTlsMetadata" -}}
{{- if .Values.postgres.tls.verifyFull }}
- name: sslRootCert
  value: {{ include "taskevents.postgresCaFile" . | quote }}
{{- end }}
{{- end -}}

{{/* Environment of a container that connects to Postgres itself (asyncpg reads libpq's
     PGSSLMODE and PGSSLROOTCERT; an sslmode in DATABASE_URL still wins). */}}
{{- define "taskevents.postgresTlsEnv" -}}
{{- if .Values.postgres.tls.verifyFull }}
- name: PGSSLMODE
  value: verify-full
- name: PGSSLROOTCERT
  value: {{ include "taskevents.postgresCaFile" . | quote }}
{{- end }}
{{- end -}}

{{- define "taskevents.postgresCaVolumeMount" -}}
{{- if .Values.postgres.tls.verifyFull }}
- name: postgres-ca
  mountPath: {{ include "taskevents.postgresCaDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "taskevents.postgresCaVolume" -}}
{{- $tls := .Values.postgres.tls -}}
{{- if $tls.verifyFull }}
- name: postgres-ca
  secret:
    secretName: {{ required "postgres.tls.caSecret.name is required with postgres.tls.verifyFull" $tls.caSecret.name }}
    items:
      - {key: {{ $tls.caSecret.key }}, path: ca.crt}
{{- end }}
{{- end -}}

{{- define "taskevents.tracing" -}}
{{- $tracing := .Values.dapr.tracing -}}
samplingRate: {{ $tracing.samplingRate | quote }}
stdout: false
{{- if $tracing.otlpEndpoint }}
otel:
  endpointAddress: {{ $tracing.otlpEndpoint | quote }}
  isSecure: {{ $tracing.otlpIsSecure }}
  protocol: {{ $tracing.otlpProtocol | quote }}
{{- end }}
{{- end -}}

{{/* mTLS between sidecars, with the control plane's Sentry (the CRD requires all fields). */}}
{{- define "taskevents.mtls" -}}
enabled: true
workloadCertTTL: 24h
allowedClockSkew: 15m
controlPlaneTrustDomain: {{ .Values.dapr.trustDomain | quote }}
sentryAddress: {{ printf "dapr-sentry.%s.svc.cluster.local:443" .Values.dapr.controlPlaneNamespace | quote }}
{{- end -}}

{{/* Restarts ----------------------------------------------------------------------------- */}}

{{/* The files of templates/dapr/ (generated by scripts/render_chart_components.py);
     tests/integration/test_k8s_chart.py fails when this list and the directory differ. */}}
{{- define "taskevents.daprTemplates" -}}
configuration.yaml configuration-audit-log-service.yaml kafka-pubsub.yaml resiliency.yaml resiliency-audit-log-service.yaml resiliency-notification-service.yaml resiliency-recurring-task-service.yaml statestore.yaml
subscriptions-audit-log-service.yaml subscriptions-notification-service.yaml
subscriptions-recurring-task-service.yaml subscriptions-websocket-service.yaml websocket-pubsub.yaml
{{- end -}}

{{/* A digest of the Dapr resources one app's sidecar loads (scoped to the app, or not scoped):
     daprd reads them only at start. (dict "root" $ "appId" "audit-log-service") */}}
{{- define "taskevents.daprChecksum" -}}
{{- $root := .root -}}
{{- $appId := .appId -}}
{{- $used := list -}}
{{- range $file := splitList " " (include "taskevents.daprTemplates" $root | replace "\n" " ") -}}
{{- range $text := splitList "\n---\n" (include (printf "%s/dapr/%s" $root.Template.BasePath $file) $root) -}}
{{- $document := fromYaml $text -}}
{{- if or (not $document.scopes) (has $appId $document.scopes) -}}
{{- $used = append $used $text -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n---\n" $used | sha256sum -}}
{{- end -}}

{{/* A digest of the Secrets every service pod reads at start: the chart's own (rendered), and
     those made outside the release (existingSecret, appTokenSecret, apiTokenSecret) as the
     cluster holds them at install or upgrade time, so `helm upgrade` after rotating one of
     them restarts the pods. (`helm template` sees no cluster: those parts are empty.) */}}
{{- define "taskevents.secretsChecksum" -}}
{{- $parts := list (include (printf "%s/secrets.yaml" .Template.BasePath) .) -}}
{{- range $name := list .Values.secrets.existingSecret .Values.dapr.appTokenSecret .Values.dapr.apiTokenSecret -}}
{{- if $name -}}
{{- $secret := lookup "v1" "Secret" $.Release.Namespace $name | default dict -}}
{{- $parts = append $parts (printf "%s %s" $name (get $secret "data" | default dict | toJson)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}
