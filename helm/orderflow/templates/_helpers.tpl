{{/*
Names
*/}}
{{- define "orderflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (DNS label). The role
suffixes ("-api", "-worker", "-migrate") are added by the templates, so the
base is cut to leave room for them.
*/}}
{{- define "orderflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "orderflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels. Call with (dict "root" $ "component" "api").
*/}}
{{- define "orderflow.labels" -}}
helm.sh/chart: {{ include "orderflow.chart" .root }}
{{ include "orderflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "orderflow.name" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add anything that changes
between upgrades). Call with (dict "root" $ "component" "api").
*/}}
{{- define "orderflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orderflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "orderflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orderflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orderflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "orderflow.configMapName" -}}
{{- printf "%s-config" (include "orderflow.fullname" .) }}
{{- end }}

{{/*
The Secret the pods read: an existing one, or the chart's own.
*/}}
{{- define "orderflow.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else }}
{{- printf "%s-secrets" (include "orderflow.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Ports: taken from the listen addresses in the configuration, so the
container ports, probes and Services cannot disagree with what the process
binds.
*/}}
{{- define "orderflow.apiPort" -}}
{{- $listen := dig "Api" "Listen" "0.0.0.0:8080" .Values.config }}
{{- splitList ":" $listen | last | int }}
{{- end }}

{{- define "orderflow.adminPort" -}}
{{- $listen := dig "Worker" "AdminListen" "0.0.0.0:9090" .Values.config }}
{{- splitList ":" $listen | last | int }}
{{- end }}

{{/*
config.toml from .Values.config.

Helm's own toToml is not used: values arrive as float64, which it prints as
"10.0", and orderflow's integer settings reject that. Here whole numbers are
written as integers, strings as basic strings, and nested maps as [a.b]
tables (scalars first, keys sorted).
*/}}
{{- define "orderflow.configToml" -}}
# orderflow configuration rendered by the Helm chart from .Values.config.
# Secrets are not here: Database__Url, the SASL / Service Bus credentials and
# the API token values (Api__Auth__Tokens__<name>__Token) come from the
# Secret as environment variables, which override this file.
{{- include "orderflow.toml.table" (dict "table" .Values.config "prefix" "") }}
{{- end }}

{{- define "orderflow.toml.table" -}}
{{- $table := .table }}
{{- $prefix := .prefix }}
{{- $scalars := list }}
{{- $tables := list }}
{{- range $key, $value := $table }}
{{- if kindIs "map" $value }}
{{- $tables = append $tables $key }}
{{- else if not (kindIs "invalid" $value) }}
{{- $scalars = append $scalars $key }}
{{- end }}
{{- end }}
{{- if and $prefix (or $scalars (not $tables)) }}

[{{ $prefix }}]
{{- end }}
{{- range $key := $scalars }}
{{ include "orderflow.toml.key" $key }} = {{ include "orderflow.toml.value" (index $table $key) }}
{{- end }}
{{- range $key := $tables }}
{{- $child := include "orderflow.toml.key" $key }}
{{- if $prefix }}
{{- $child = printf "%s.%s" $prefix $child }}
{{- end }}
{{- include "orderflow.toml.table" (dict "table" (index $table $key) "prefix" $child) }}
{{- end }}
{{- end }}

{{- define "orderflow.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "orderflow.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "orderflow.toml.value" $v }}{{ end }}]
{{- else }}{{ fail (printf "config: a %s cannot be written to config.toml" (kindOf .)) }}
{{- end }}
{{- end }}

{{/*
The secrets a role's pods are given, as a JSON list of secret.* value
names: only what the role uses. The binary requires a secret only of a
command that uses it (API tokens: serve-api; SASL credentials: serve-api
and run-worker; the Service Bus connection string: run-worker), so the
migrate Job runs on the database URL alone. Call with (dict "role" "api"),
"worker" or "migrate"; "" is every secret (the chart's Secret itself).
*/}}
{{- define "orderflow.roleSecrets" -}}
{{- $byRole := dict
  "api" (list "databaseUrl" "kafkaUsername" "kafkaPassword" "apiTokens")
  "worker" (list "databaseUrl" "kafkaUsername" "kafkaPassword" "serviceBusConnectionString")
  "migrate" (list "databaseUrl")
  "" (list "databaseUrl" "kafkaUsername" "kafkaPassword" "serviceBusConnectionString" "apiTokens") }}
{{- if not (hasKey $byRole .role) }}
{{- fail (printf "orderflow.roleSecrets: unknown role %q" .role) }}
{{- end }}
{{- get $byRole .role | toJson }}
{{- end }}

{{/*
Environment of a role (api, worker, migrate): the configuration file, and
the secrets that role uses, each from its own Secret key (never envFrom,
which would hand every key to every pod). Call with
(dict "root" $ "role" "api" "secretName" "..." "extraEnv" list).
*/}}
{{- define "orderflow.env" -}}
{{- $root := .root }}
{{- $keys := $root.Values.secret.keys }}
{{- $uses := include "orderflow.roleSecrets" (dict "role" .role) | fromJsonArray }}
- name: ORDERFLOW_CONFIG
  value: /etc/orderflow/config.toml
{{- with $root.Values.logLevel }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
- name: Database__Url
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $keys.databaseUrl }}
{{- if has "kafkaUsername" $uses }}
- name: KafkaConfiguration__Security__Username
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $keys.kafkaUsername }}
      optional: true
{{- end }}
{{- if has "kafkaPassword" $uses }}
- name: KafkaConfiguration__Security__Password
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $keys.kafkaPassword }}
      optional: true
{{- end }}
{{- if has "serviceBusConnectionString" $uses }}
- name: Fulfilment__ConnectionString
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $keys.serviceBusConnectionString }}
      optional: true
{{- end }}
{{- /* Not optional: a missing key stops the pod with an event naming it. */}}
{{- if has "apiTokens" $uses }}
{{- range $name := include "orderflow.apiTokenNames" $root | fromJsonArray }}
- name: Api__Auth__Tokens__{{ $name }}__Token
  valueFrom:
    secretKeyRef:
      name: {{ $.secretName }}
      key: {{ $keys.apiTokenPrefix }}{{ $name }}
{{- end }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Secret data of a role's secrets (orderflow.roleSecrets; "" for all of
them): the chart's Secret, the migrate hook's copy, and each role's
checksum, so a pod rolls only when a secret it is given changes. Keys with
empty values are left out, so the optional env vars above stay unset
instead of being set to "". Call with (dict "root" $ "role" "").
*/}}
{{- define "orderflow.secretData" -}}
{{- $root := .root }}
{{- $s := $root.Values.secret }}
{{- $keys := $s.keys }}
{{- $uses := include "orderflow.roleSecrets" (dict "role" .role) | fromJsonArray }}
{{ $keys.databaseUrl }}: {{ required "secret.databaseUrl is required unless secret.existingSecret is set" $s.databaseUrl | b64enc | quote }}
{{- range $name := list "kafkaUsername" "kafkaPassword" "serviceBusConnectionString" }}
{{- $value := get $s $name }}
{{- if and $value (has $name $uses) }}
{{ get $keys $name }}: {{ $value | b64enc | quote }}
{{- end }}
{{- end }}
{{- if has "apiTokens" $uses }}
{{- range $name, $token := include "orderflow.apiTokens" $root | fromJson }}
{{ $keys.apiTokenPrefix }}{{ $name }}: {{ $token | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The names of the static API tokens (config.Api.Auth.Tokens), sorted, as a
JSON list.
*/}}
{{- define "orderflow.apiTokenNames" -}}
{{- $tokens := dig "Api" "Auth" "Tokens" dict .Values.config }}
{{- keys $tokens | sortAlpha | toJson }}
{{- end }}

{{/*
The API token values by name, as JSON: secret.apiTokens.<name> if given,
else the value the release's Secret already holds (`lookup`; nothing when
rendering offline or on a first install), else 48 random characters. Worked
out once per render and kept in .Values, so the Secret, the migrate hook's
copy and the checksum annotation all see the same tokens.
*/}}
{{- define "orderflow.apiTokens" -}}
{{- if not (hasKey .Values "orderflowGeneratedApiTokens") }}
{{- $names := include "orderflow.apiTokenNames" . | fromJsonArray }}
{{- $given := .Values.secret.apiTokens | default dict }}
{{- range $name, $_ := $given }}
{{- if not (has $name $names) }}
{{- fail (printf "secret.apiTokens.%s: no token %q in config.Api.Auth.Tokens" $name $name) }}
{{- end }}
{{- end }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "orderflow.secretName" .) | default dict }}
{{- $data := dig "data" dict $existing }}
{{- $tokens := dict }}
{{- range $name := $names }}
{{- $token := get $given $name | default "" | trim }}
{{- if not $token }}
{{- with get $data (printf "%s%s" $.Values.secret.keys.apiTokenPrefix $name) }}
{{- $token = b64dec . }}
{{- end }}
{{- end }}
{{- if not $token }}
{{- $token = randAlphaNum 48 }}
{{- end }}
{{- $_ := set $tokens $name $token }}
{{- end }}
{{- $_ := set .Values "orderflowGeneratedApiTokens" $tokens }}
{{- end }}
{{- toJson .Values.orderflowGeneratedApiTokens }}
{{- end }}

{{/*
Volumes of every role. Call with (dict "root" $ "configMap" "name").
*/}}
{{- define "orderflow.configVolume" -}}
{{- $tls := .root.Values.tlsFiles }}
- name: config
  configMap:
    name: {{ .configMap }}
    items:
      - key: config.toml
        path: config.toml
- name: tmp
  emptyDir: {}
{{- if $tls.secretName }}
- name: tls-files
  secret:
    secretName: {{ $tls.secretName }}
    defaultMode: 288 # 0440: the pod's group (fsGroup) reads the key
{{- else if $tls.configMapName }}
- name: tls-files
  configMap:
    name: {{ $tls.configMapName }}
    defaultMode: 288 # 0440
{{- end }}
{{- end }}

{{- define "orderflow.configVolumeMounts" -}}
- name: config
  mountPath: /etc/orderflow
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or .Values.tlsFiles.secretName .Values.tlsFiles.configMapName }}
- name: tls-files
  mountPath: {{ .Values.tlsFiles.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod-level fields shared by the roles. Call with (dict "root" $ "role" .Values.api).
With "hook" true (the migrate Job) the chart's own ServiceAccount is not used:
a pre-install hook runs before it exists, so the namespace's default one is.
*/}}
{{- define "orderflow.podCommon" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if not .hook }}
serviceAccountName: {{ include "orderflow.serviceAccountName" $root }}
{{- else if not $root.Values.serviceAccount.create }}
serviceAccountName: {{ include "orderflow.serviceAccountName" $root }}
{{- end }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod annotations: a checksum of the rendered config and of the secrets the
role is given, so that a change rolls the roles it reaches. Call with
(dict "root" $ "role" .Values.api "component" "api").
*/}}
{{- define "orderflow.podAnnotations" -}}
checksum/config: {{ include "orderflow.configToml" .root | sha256sum }}
{{- if not .root.Values.secret.existingSecret }}
checksum/secret: {{ include "orderflow.secretData" (dict "root" .root "role" .component) | sha256sum }}
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .role.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The worker's workload kind: a StatefulSet with static membership. */}}
{{- define "orderflow.workerKind" -}}
{{- if .Values.worker.staticMembership -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end }}
