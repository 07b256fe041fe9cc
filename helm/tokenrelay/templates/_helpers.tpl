{{/*
Named templates of the tokenrelay chart.

Public (stable, for use from your own chart; see README.md "Using the sidecar in your own chart").
Each takes a dict: "root" = the top-level context ($), "values" = tokenrelay's values (this
chart's .Values, or .Values.tokenrelay in a parent chart that depends on this one):

  tokenrelay.initContainers   the tokenrelay native sidecar (list items; put them first)
  tokenrelay.sidecar          the same container (a list item), for use among other init
                              containers
  tokenrelay.appEnv           env entries for application containers (list items)
  tokenrelay.volumes          pod volumes the sidecar mounts (list items)
  tokenrelay.podLabels        pod labels (the workload identity opt-in, and the label the
                              metrics Service selects)
  tokenrelay.podAnnotations   pod annotations; needs "containers": the names of every other
                              container of the pod (app containers and other init containers)
  tokenrelay.serviceAccountName

Everything else here is internal.
*/}}

{{/* Base name: "tokenrelay" unless nameOverride. */}}
{{- define "tokenrelay.name" -}}
{{- default "tokenrelay" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-tokenrelay", or the release name when it already contains the base name. */}}
{{- define "tokenrelay.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tokenrelay.name" . -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tokenrelay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "tokenrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenrelay.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "tokenrelay.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- default (include "tokenrelay.fullname" .) .values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenrelay.identityHeaderSecretName" -}}
{{- default (printf "%s-identity-header" (include "tokenrelay.fullname" .)) .values.identityHeader.existingSecret -}}
{{- end -}}

{{/*
The value (base64, as Secret data) of the identity-header Secret the chart generates: the one
already in the cluster (`lookup`), else a new random one. Memoized for the whole render in
.Release, the one map every template of a release shares (this chart's and a parent chart's
alike; Helm builds it once per render), so that the Secret and the pod annotation
checksum/identity-header agree even when the value is new. Only for a chart-generated Secret.
*/}}
{{- define "tokenrelay.identityHeaderValue" -}}
{{- $name := include "tokenrelay.identityHeaderSecretName" . -}}
{{- $memo := printf "tokenrelay.identityHeader/%s/%s" .root.Release.Namespace $name -}}
{{- if not (hasKey .root.Release $memo) -}}
{{- $value := randAlphaNum 48 | b64enc -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace $name -}}
{{- if and $existing $existing.data -}}
{{- with index $existing.data .values.identityHeader.key -}}
{{- $value = . -}}
{{- end -}}
{{- end -}}
{{- $_ := set .root.Release $memo $value -}}
{{- end -}}
{{- index .root.Release $memo -}}
{{- end -}}

{{- define "tokenrelay.cacheKeySecretName" -}}
{{- default (printf "%s-cache-key" (include "tokenrelay.fullname" .)) .values.persistence.encryptionKey.existingSecret -}}
{{- end -}}

{{/* server.admin_listen: "0.0.0.0:8081", or "[::]:8081" for an IPv6 bind address. */}}
{{- define "tokenrelay.adminListen" -}}
{{- $v := .values -}}
{{- if eq (int $v.admin.port) (int $v.port) -}}
{{- fail (printf "tokenrelay: admin.port (%d) must differ from port, the token listener" (int $v.admin.port)) -}}
{{- end -}}
{{- if contains ":" $v.admin.bindAddress -}}
{{- printf "[%s]:%d" $v.admin.bindAddress (int $v.admin.port) -}}
{{- else -}}
{{- printf "%s:%d" $v.admin.bindAddress (int $v.admin.port) -}}
{{- end -}}
{{- end -}}

{{- define "tokenrelay.workloadIdentity" -}}
{{- if eq .values.azure.credential "workloadIdentity" -}}true{{- end -}}
{{- end -}}

{{- define "tokenrelay.clientSecretMountPath" -}}/run/secrets/tokenrelay-client-secret{{- end -}}

{{/* Where the persistent cache lives inside the tokenrelay container. */}}
{{- define "tokenrelay.cacheMountPath" -}}/var/cache{{- end -}}
{{- define "tokenrelay.cacheKeyMountPath" -}}/run/secrets/tokenrelay-cache{{- end -}}
{{- define "tokenrelay.sharedCacheMountPath" -}}/run/secrets/tokenrelay-shared-cache{{- end -}}
{{- define "tokenrelay.sharedCacheCaMountPath" -}}/run/secrets/tokenrelay-shared-cache-ca{{- end -}}

{{/* "true" when the cache key Secret is mounted: the persistent cache or the shared cache is on. */}}
{{- define "tokenrelay.usesCacheKey" -}}
{{- if or .values.persistence.enabled .values.sharedCache.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The image reference. Without image.tag the chart's appVersion is used, which is only right
inside this chart: a parent chart has its own appVersion, so there the tag is required.
*/}}
{{- define "tokenrelay.image" -}}
{{- $image := .values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else if $image.tag -}}
{{- printf "%s:%s" $image.repository $image.tag -}}
{{- else if eq .root.Chart.Name "tokenrelay" -}}
{{- printf "%s:%s" $image.repository .root.Chart.AppVersion -}}
{{- else -}}
{{- fail "tokenrelay: set image.tag (or image.digest) in the tokenrelay values when including its templates from another chart" -}}
{{- end -}}
{{- end -}}

{{/*
tokenrelay's configuration file (TOML). Strings are written with toJson: a JSON string is a
valid TOML basic string. Empty output means no ConfigMap and no TOKENRELAY_CONFIG.
Without azure.clientId no [[identities]] is written and tokenrelay derives its one identity
from the AZURE_* variables the webhook injects.
*/}}
{{- define "tokenrelay.configToml" -}}
{{- $v := .values -}}
{{- if and $v.prefetch (not $v.azure.clientId) -}}
{{- fail "tokenrelay: prefetch needs azure.clientId (the identity the tokens are fetched for)" -}}
{{- end -}}
{{- if eq $v.azure.credential "clientSecret" }}
{{- if not (and $v.azure.clientId $v.azure.tenantId $v.azure.clientSecret.existingSecret) -}}
{{- fail "tokenrelay: azure.credential clientSecret needs azure.clientId (the application id), azure.tenantId and azure.clientSecret.existingSecret (a Secret with the secret's value)" -}}
{{- end }}
# The app registration tokenrelay signs in as, with a client secret mounted from the Secret
# {{ $v.azure.clientSecret.existingSecret }} (read again whenever the Secret changes).
[[identities]]
name = "app"
client_id = {{ $v.azure.clientId | toJson }}
tenant_id = {{ $v.azure.tenantId | toJson }}
default = true
prefetch = [{{ range $i, $resource := $v.prefetch }}{{ if $i }}, {{ end }}{{ $resource | toJson }}{{ end }}]
credentials = [{ kind = "client_secret", secret_file = {{ printf "%s/client-secret" (include "tokenrelay.clientSecretMountPath" .) | toJson }} }]
{{- else if $v.azure.clientId }}
# The identity that the AKS workload identity webhook federates for this pod's
# ServiceAccount. The token file comes from AZURE_FEDERATED_TOKEN_FILE (set by the webhook)
{{- if not $v.azure.tenantId }}
# and the tenant from AZURE_TENANT_ID
{{- end }}.
[[identities]]
name = "workload"
client_id = {{ $v.azure.clientId | toJson }}
{{- with $v.azure.tenantId }}
tenant_id = {{ . | toJson }}
{{- end }}
default = true
prefetch = [{{ range $i, $resource := $v.prefetch }}{{ if $i }}, {{ end }}{{ $resource | toJson }}{{ end }}]
credentials = [{ kind = "workload_identity" }]
{{- end }}
{{- with $v.config }}

# From the chart value "config":
{{ . }}
{{- end }}
{{- end -}}

{{- define "tokenrelay.hasConfig" -}}
{{- if include "tokenrelay.configToml" . | trim -}}true{{- end -}}
{{- end -}}

{{/* The tokenrelay native sidecar (an initContainers list item). */}}
{{- define "tokenrelay.sidecar" -}}
{{- $v := .values -}}
- name: tokenrelay
  image: {{ include "tokenrelay.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  # Native sidecar: starts before the app, keeps running, stops after the app.
  restartPolicy: Always
  args: ["serve"]
  env:
    # Token endpoints: loopback only; the pod's containers share the network namespace.
    - name: TOKENRELAY_SERVER__LISTEN
      value: {{ printf "127.0.0.1:%d" (int $v.port) | quote }}
    # Health, readiness and metrics only (no token endpoint): kubelet probes, Prometheus.
    - name: TOKENRELAY_SERVER__ADMIN_LISTEN
      value: {{ include "tokenrelay.adminListen" . | quote }}
    - name: TOKENRELAY_SERVER__IDENTITY_HEADER_FILE
      value: /run/secrets/tokenrelay/identity-header
    {{- if include "tokenrelay.hasConfig" . }}
    - name: TOKENRELAY_CONFIG
      value: /etc/tokenrelay/config.toml
    {{- end }}
    - name: TOKENRELAY_LOG__LEVEL
      value: {{ $v.logLevel | quote }}
    {{- if not $v.metrics.enabled }}
    - name: TOKENRELAY_TELEMETRY__METRICS
      value: "false"
    {{- end }}
    {{- if $v.persistence.enabled }}
    # Persistent cache: an encrypted file on the tokenrelay-cache emptyDir.
    - name: TOKENRELAY_CACHE__PERSISTENCE__ENABLED
      value: "true"
    - name: TOKENRELAY_CACHE__PERSISTENCE__BACKEND
      value: file
    - name: TOKENRELAY_CACHE__PERSISTENCE__PATH
      value: {{ printf "%s/tokenrelay/tokens.cache" (include "tokenrelay.cacheMountPath" .) }}
    - name: TOKENRELAY_CACHE__PERSISTENCE__KEY_FILE
      value: {{ printf "%s/key" (include "tokenrelay.cacheKeyMountPath" .) }}
    {{- end }}
    {{- with $v.sharedCache }}
    {{- if .enabled }}
    # Shared cache: tokens shared by the replicas through Valkey/Redis, sealed with the cache key.
    - name: TOKENRELAY_CACHE__SHARED__URL
      value: {{ .url | quote }}
    - name: TOKENRELAY_CACHE__SHARED__KEY_FILE
      value: {{ printf "%s/key" (include "tokenrelay.cacheKeyMountPath" $) }}
    - name: TOKENRELAY_CACHE__SHARED__KEY_PREFIX
      value: {{ .keyPrefix | quote }}
    {{- with .username }}
    - name: TOKENRELAY_CACHE__SHARED__USERNAME
      value: {{ . | quote }}
    {{- end }}
    {{- if .password.existingSecret }}
    - name: TOKENRELAY_CACHE__SHARED__PASSWORD_FILE
      value: {{ printf "%s/password" (include "tokenrelay.sharedCacheMountPath" $) }}
    {{- end }}
    {{- if .ca.existingSecret }}
    - name: TOKENRELAY_CACHE__SHARED__CA_FILE
      value: {{ printf "%s/ca.crt" (include "tokenrelay.sharedCacheCaMountPath" $) }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    # The admin listener (the loopback token port is unreachable on the pod IP: not declared).
    - name: relay-admin
      containerPort: {{ int $v.admin.port }}
      protocol: TCP
  # The app containers start only once this succeeds (/readyz: the prefetches are cached).
  startupProbe:
    httpGet:
      path: /readyz
      port: relay-admin
    {{- toYaml $v.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: relay-admin
    {{- toYaml $v.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: relay-admin
    {{- toYaml $v.probes.readiness | nindent 4 }}
  volumeMounts:
    - name: tokenrelay-identity-header
      mountPath: /run/secrets/tokenrelay
      readOnly: true
    {{- if include "tokenrelay.hasConfig" . }}
    - name: tokenrelay-config
      mountPath: /etc/tokenrelay
      readOnly: true
    {{- end }}
    {{- if not (include "tokenrelay.workloadIdentity" .) }}
    - name: tokenrelay-client-secret
      mountPath: {{ include "tokenrelay.clientSecretMountPath" . }}
      readOnly: true
    {{- end }}
    {{- if $v.persistence.enabled }}
    - name: tokenrelay-cache
      mountPath: {{ include "tokenrelay.cacheMountPath" . }}
    {{- end }}
    {{- if include "tokenrelay.usesCacheKey" . }}
    - name: tokenrelay-cache-key
      mountPath: {{ include "tokenrelay.cacheKeyMountPath" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.sharedCache.enabled $v.sharedCache.password.existingSecret }}
    - name: tokenrelay-shared-cache-password
      mountPath: {{ include "tokenrelay.sharedCacheMountPath" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.sharedCache.enabled $v.sharedCache.ca.existingSecret }}
    - name: tokenrelay-shared-cache-ca
      mountPath: {{ include "tokenrelay.sharedCacheCaMountPath" . }}
      readOnly: true
    {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
{{- end -}}

{{/* The init containers tokenrelay adds to a pod: the native sidecar. */}}
{{- define "tokenrelay.initContainers" -}}
{{ include "tokenrelay.sidecar" . }}
{{- end -}}

{{/* Environment of application containers (env list items). */}}
{{- define "tokenrelay.appEnv" -}}
{{- include "tokenrelay.appEnvLines" . | trim -}}
{{- end -}}

{{- define "tokenrelay.appEnvLines" -}}
{{- $v := .values -}}
{{- if has $v.clientEnv (list "appService" "both") }}
# App Service managed-identity protocol: every Azure SDK picks it up.
- name: IDENTITY_ENDPOINT
  value: {{ printf "http://127.0.0.1:%d/msi/token" (int $v.port) | quote }}
- name: IDENTITY_HEADER
  valueFrom:
    secretKeyRef:
      name: {{ include "tokenrelay.identityHeaderSecretName" . }}
      key: {{ $v.identityHeader.key }}
{{- end }}
{{- if has $v.clientEnv (list "imds" "both") }}
# IMDS protocol at a custom address (Python, JavaScript and .NET SDKs).
- name: AZURE_POD_IDENTITY_AUTHORITY_HOST
  value: {{ printf "http://127.0.0.1:%d" (int $v.port) | quote }}
{{- end }}
{{- end -}}

{{/* Pod volumes used by the sidecar (volumes list items). */}}
{{- define "tokenrelay.volumes" -}}
- name: tokenrelay-identity-header
  secret:
    secretName: {{ include "tokenrelay.identityHeaderSecretName" . }}
    items:
      - key: {{ .values.identityHeader.key }}
        path: identity-header
{{- if include "tokenrelay.hasConfig" . }}
- name: tokenrelay-config
  configMap:
    name: {{ include "tokenrelay.fullname" . }}-config
{{- end }}
{{- if not (include "tokenrelay.workloadIdentity" .) }}
- name: tokenrelay-client-secret
  secret:
    secretName: {{ .values.azure.clientSecret.existingSecret }}
    items:
      - key: {{ .values.azure.clientSecret.key }}
        path: client-secret
{{- end }}
{{- with .values.persistence }}
{{- if .enabled }}
- name: tokenrelay-cache
  emptyDir:
    {{- with .medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .sizeLimit }}
{{- end }}
{{- end }}
{{- if include "tokenrelay.usesCacheKey" . }}
- name: tokenrelay-cache-key
  secret:
    secretName: {{ include "tokenrelay.cacheKeySecretName" . }}
    items:
      - key: {{ .values.persistence.encryptionKey.key }}
        path: key
{{- end }}
{{- with .values.sharedCache }}
{{- if and .enabled .password.existingSecret }}
- name: tokenrelay-shared-cache-password
  secret:
    secretName: {{ .password.existingSecret }}
    items:
      - key: {{ .password.key }}
        path: password
{{- end }}
{{- if and .enabled .ca.existingSecret }}
- name: tokenrelay-shared-cache-ca
  secret:
    secretName: {{ .ca.existingSecret }}
    items:
      - key: {{ .ca.key }}
        path: ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/*
Opts the pod in to the AKS workload identity webhook (credential workloadIdentity), and marks
it as carrying this release's sidecar (the metrics Service selects that label).
*/}}
{{- define "tokenrelay.podLabels" -}}
{{- if include "tokenrelay.workloadIdentity" . -}}
azure.workload.identity/use: "true"
{{ end -}}
tokenrelay/instance: {{ include "tokenrelay.fullname" . }}
{{- end -}}

{{/*
skip-containers keeps the webhook's AZURE_* variables and projected token out of every
container except tokenrelay (they would make SDKs bypass it:
docs/protocols.md#variables-that-bypass-the-sidecar).
*/}}
{{- define "tokenrelay.podAnnotations" -}}
{{- include "tokenrelay.podAnnotationLines" . | trim -}}
{{- end -}}

{{- define "tokenrelay.podAnnotationLines" -}}
{{- if not .containers -}}
{{- fail "tokenrelay.podAnnotations needs \"containers\": the names of every container of the pod other than tokenrelay" -}}
{{- end -}}
{{- $names := list -}}
{{- range .containers -}}
{{- if eq . "tokenrelay" -}}
{{- fail "tokenrelay.podAnnotations: \"containers\" must not name tokenrelay itself" -}}
{{- end -}}
{{- $names = append $names . -}}
{{- end -}}
{{- if include "tokenrelay.workloadIdentity" . }}
azure.workload.identity/skip-containers: {{ join ";" $names | quote }}
{{- end }}
{{- with include "tokenrelay.configToml" . | trim }}
checksum/tokenrelay-config: {{ . | sha256sum }}
{{- end }}
{{- /*
tokenrelay reads the header from its file and the app from IDENTITY_HEADER, both at start: a
changed Secret must restart every container of the pod together (a lone tokenrelay restart
would answer the app's old value with 401). Chart-generated: the hash of the value (48 random
characters; the hash gives nothing away). existingSecret: the hash of the Secret's uid and
resourceVersion, which change with its data and reveal nothing about a value the chart did not
choose; without cluster access (helm template) there is nothing to look up and no annotation.
*/}}
{{- if .values.identityHeader.existingSecret }}
{{- with lookup "v1" "Secret" .root.Release.Namespace .values.identityHeader.existingSecret }}
checksum/identity-header: {{ printf "%s/%s" .metadata.uid .metadata.resourceVersion | sha256sum }}
{{- end }}
{{- else }}
checksum/identity-header: {{ include "tokenrelay.identityHeaderValue" . | sha256sum }}
{{- end }}
{{- if and .values.metrics.enabled .values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ int .values.admin.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The stand-in app's script for the chosen workload kind (never logs the token). */}}
{{- define "tokenrelay.demoCommand" -}}
{{- $v := .values -}}
{{- $request := "" -}}
{{- if eq $v.clientEnv "imds" -}}
{{- $request = `wget -q -O - --header "Metadata: true" "$AZURE_POD_IDENTITY_AUTHORITY_HOST/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com"` -}}
{{- else -}}
{{- $request = `wget -q -O - --header "X-IDENTITY-HEADER: $IDENTITY_HEADER" "$IDENTITY_ENDPOINT?api-version=2019-08-01&resource=https://management.azure.com"` -}}
{{- end -}}
- sh
- -c
{{- if eq $v.workload.kind "Job" }}
- |
  {{ $request }} \
    | grep -o '"expires_on":"[0-9]*"'
{{- else }}
- |
  while true; do
    {{ $request }} \
      | grep -o '"expires_on":"[0-9]*"' || echo "token request failed"
    sleep 300
  done
{{- end }}
{{- end -}}

{{/* The pod template shared by the example Deployment and Job. */}}
{{- define "tokenrelay.examplePodTemplate" -}}
{{- $v := .values -}}
{{- $w := $v.workload -}}
{{- $ctx := merge (dict "containers" (list $w.containerName)) . -}}
metadata:
  labels:
    {{- include "tokenrelay.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: {{ lower $w.kind }}
    {{- include "tokenrelay.podLabels" . | nindent 4 }}
    {{- with $w.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "tokenrelay.podAnnotations" $ctx | nindent 4 }}
    {{- with $w.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "tokenrelay.serviceAccountName" . }}
  automountServiceAccountToken: {{ $w.automountServiceAccountToken }}
  # No TOKENRELAY_* (or other) variables for the namespace's Services: the kubelet derives them
  # from Service names, and one named tokenrelay-<anything> yields TOKENRELAY_<ANYTHING>_...
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ int $w.terminationGracePeriodSeconds }}
  {{- if eq $w.kind "Job" }}
  restartPolicy: {{ $w.job.restartPolicy }}
  {{- end }}
  {{- with .values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- toYaml $w.podSecurityContext | nindent 4 }}
  initContainers:
    {{- include "tokenrelay.initContainers" . | nindent 4 }}
  containers:
    - name: {{ $w.containerName }}
      image: {{ $w.image | quote }}
      imagePullPolicy: {{ $w.pullPolicy }}
      command:
        {{- if $w.command }}
        {{- toYaml $w.command | nindent 8 }}
        {{- else }}
        {{- include "tokenrelay.demoCommand" . | nindent 8 }}
        {{- end }}
      {{- with $w.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- include "tokenrelay.appEnv" . | nindent 8 }}
        {{- with $w.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $w.resources | nindent 8 }}
      securityContext:
        {{- toYaml $w.securityContext | nindent 8 }}
  volumes:
    {{- include "tokenrelay.volumes" . | nindent 4 }}
  {{- with $w.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
