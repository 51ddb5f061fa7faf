{{/* Names, labels and the pieces every data-feed workload shares. */}}

{{- define "data-feed.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* labels of every object; pass (dict "root" $ "component" "collector") */}}
{{- define "data-feed.labels" -}}
app.kubernetes.io/name: data-feed
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "data-feed.chart" .root }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* selector labels of one workload; pass (dict "root" $ "component" "aggregator" "extra" (dict ...)) */}}
{{- define "data-feed.selector" -}}
app.kubernetes.io/name: data-feed
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- range $k, $v := .extra }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{/* the prefix of every object name: fullnameOverride, else the release name. Fails when the longest name
the chart makes from it (a collector, the gateway's consumer Service, a dashboard) would pass Kubernetes'
63 characters, instead of rendering names the API server refuses. */}}
{{- define "data-feed.prefix" -}}
{{- $prefix := default .Release.Name .Values.fullnameOverride -}}
{{- $longest := "gateway-consumers" -}}
{{- range .Values.exchanges }}{{ $n := printf "collector-%s" (lower . | replace "_" "-") }}{{ if gt (len $n) (len $longest) }}{{ $longest = $n }}{{ end }}{{ end }}
{{- if .Values.grafanaDashboards.enabled }}{{ range $path, $_ := .Files.Glob "files/dashboards/*.json" }}{{ $n := printf "dashboard-%s" (base $path | trimSuffix ".json") }}{{ if gt (len $n) (len $longest) }}{{ $longest = $n }}{{ end }}{{ end }}{{ end }}
{{- $name := printf "%s-%s" $prefix $longest -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "object name %s would be %d characters, over Kubernetes' 63: set fullnameOverride to a prefix of at most %d characters (now %q)" $name (len $name) (sub 62 (len $longest)) $prefix) -}}
{{- end -}}
{{- $prefix -}}
{{- end }}

{{- define "data-feed.serviceAccountName" -}}
{{- default (printf "%s-data-feed" (include "data-feed.prefix" $)) .Values.serviceAccount.name }}
{{- end }}

{{- define "data-feed.busHost" -}}
{{ include "data-feed.prefix" $ }}-bus
{{- end }}

{{- define "data-feed.redisHost" -}}
{{ include "data-feed.prefix" $ }}-redis
{{- end }}

{{/* where the Redis URL comes from: builtin, url or secret */}}
{{- define "data-feed.redisMode" -}}
{{- if .Values.redis.external.existingSecret }}secret
{{- else if .Values.redis.external.url }}url
{{- else }}builtin
{{- end }}
{{- end }}

{{/* the data-feed config the ConfigMap holds: .Values.config plus what the chart runs */}}
{{- define "data-feed.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $given := default dict $config.exchanges }}
{{- range $name, $_ := $given }}
{{- if not (has $name $.Values.exchanges) }}
{{- fail (printf "config.exchanges.%s: %s is not in exchanges (the list the collectors are made from)" $name $name) }}
{{- end }}
{{- end }}
{{- $exchanges := dict }}
{{- range .Values.exchanges }}
{{- $exchange := deepCopy (get $given . | default $.Values.exchangeDefaults) }}
{{- if ne (default "simulator" $exchange.source) "live" }}
{{- fail (printf "exchange %s: source must be live (the chart runs no simulator role for source %s)" . (default "simulator" $exchange.source)) }}
{{- end }}
{{- $_ := set $exchanges . $exchange }}
{{- end }}
{{- $_ := set $config "exchanges" $exchanges }}
{{- $redis := dict }}
{{- $redisMode := include "data-feed.redisMode" . }}
{{- if eq $redisMode "builtin" }}{{ $_ := set $redis "url" (printf "redis://%s:6379/0" (include "data-feed.redisHost" .)) }}{{ end }}
{{- if eq $redisMode "url" }}{{ $_ := set $redis "url" .Values.redis.external.url }}{{ end }}
{{- /* secret: the config init container sets redis.url from the Secret */}}
{{- $bus := printf "tcp://%s" (include "data-feed.busHost" .) }}
{{- $gateway := dict "enabled" .Values.gateway.enabled "endpoint" (printf "tcp://0.0.0.0:%v" .Values.gateway.port) }}
{{- if .Values.gateway.existingKeySecret }}{{ $_ := set $gateway "server_key_file" "/etc/data-feed/gateway/gateway.key" }}{{ end }}
{{- $owned := dict
    "redis" $redis
    "bus" (dict "enabled" true
                "publish_endpoint" (printf "%s:%v" $bus .Values.bus.publishPort)
                "subscribe_endpoint" (printf "%s:%v" $bus .Values.bus.subscribePort))
    "aggregator" (dict "shards" .Values.aggregator.shards)
    "featurizer" (dict "enabled" .Values.featurizer.enabled)
    "gateway" $gateway
    "spawner" (dict "run_dir" "/run/data-feed") }}
{{- toYaml (mergeOverwrite $config $owned) }}
{{- end }}

{{/*
One data-feed pod spec. Pass (dict "root" $ "name" "collector" "args" (list ...) "resources" ... "set" (list ...)
"ports" (list (dict "name" "bus-pub" "port" 5556)) "gatewayKey" bool).
An init container writes the config the role runs with into the run dir: the ConfigMap's, with the URLs taken
from Secrets and this pod's own settings (--set), validated by data-feed's own load_config.
*/}}
{{- define "data-feed.podSpec" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $redisMode := include "data-feed.redisMode" $root }}
{{- $render := list "python" "/etc/data-feed/render-config.py" "/etc/data-feed/config.yaml" "/run/data-feed/config.yaml" }}
{{- $secrets := list }}
{{- if eq $redisMode "secret" }}
{{- $secrets = append $secrets (dict "name" "redis-url" "secret" $values.redis.external.existingSecret "key" $values.redis.external.key "config" "redis.url") }}
{{- end }}
{{- with $values.secrets.database.existingSecret }}
{{- $secrets = append $secrets (dict "name" "database-url" "secret" . "key" $values.secrets.database.key "config" "database.url") }}
{{- end }}
{{- range $secrets }}
{{- $render = concat $render (list "--set-file" (printf "%s=/run/secrets/data-feed/%s/%s" .config .name .key)) }}
{{- end }}
{{- range .set }}{{ $render = concat $render (list "--set" .) }}{{ end }}
serviceAccountName: {{ include "data-feed.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "data-feed.podSecurityContext" $root | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
initContainers:
  - name: config
    image: "{{ $values.image.repository }}:{{ $values.image.tag }}"
    imagePullPolicy: {{ $values.image.pullPolicy }}
    command: {{ toJson $render }}
    resources:
      {{- toYaml (dict "requests" (dict "cpu" "50m" "memory" "64Mi") "limits" (dict "cpu" "500m" "memory" "256Mi")) | nindent 6 }}
    securityContext:
      {{- include "data-feed.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - {name: config, mountPath: /etc/data-feed, readOnly: true}
      - {name: run, mountPath: /run/data-feed}
      {{- range $secrets }}
      - {name: {{ .name }}, mountPath: /run/secrets/data-feed/{{ .name }}, readOnly: true}
      {{- end }}
containers:
  - name: {{ .name }}
    image: "{{ $values.image.repository }}:{{ $values.image.tag }}"
    imagePullPolicy: {{ $values.image.pullPolicy }}
    args: {{ toJson (concat .args (list "--config" "/run/data-feed/config.yaml" "--http-port" (toString $values.httpPort) "--http-host" "0.0.0.0")) }}
    env:
      - name: DATA_FEED_HTTP_PORT
        value: {{ $values.httpPort | quote }}
    {{- with $values.secrets.aws.existingSecret }}
    envFrom:
      - secretRef:
          name: {{ . }}
    {{- end }}
    ports:
      - name: http
        containerPort: {{ $values.httpPort }}
      {{- range .ports }}
      - name: {{ .name }}
        containerPort: {{ .port }}
      {{- end }}
    startupProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 2
      failureThreshold: 60
    readinessProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 10
      failureThreshold: 3
    livenessProbe:
      httpGet: {path: /health, port: http}
      periodSeconds: 20
      failureThreshold: 6
    resources:
      {{- toYaml (.resources | default $values.resources) | nindent 6 }}
    securityContext:
      {{- include "data-feed.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - {name: run, mountPath: /run/data-feed}
      - {name: data, mountPath: /data}
      - {name: tmp, mountPath: /tmp}
      {{- if .gatewayKey }}
      - {name: gateway-key, mountPath: /etc/data-feed/gateway, readOnly: true}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "data-feed.prefix" $root }}-config
  - name: run
    emptyDir: {}
  - name: data
    emptyDir: {}
  - name: tmp
    emptyDir: {}
  {{- range $secrets }}
  - name: {{ .name }}
    secret:
      secretName: {{ .secret }}
      items: [{key: {{ .key }}, path: {{ .key }}}]
      defaultMode: 0440
  {{- end }}
  {{- if .gatewayKey }}
  - name: gateway-key
    secret:
      secretName: {{ $values.gateway.existingKeySecret }}
      defaultMode: 0440
  {{- end }}
{{- end }}

{{/* checkov skips, each with its reason; pass $ (.Values.secrets.aws decides the last) */}}
{{- define "data-feed.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=images are pinned by tag; release tags are immutable in the ECR repository (terraform/), so a tag names one digest
checkov.io/skip2: CKV_K8S_15=with immutable tags IfNotPresent pulls the same image as Always, without a registry round trip at every restart
{{- if .Values.secrets.aws.existingSecret }}
checkov.io/skip3: CKV_K8S_35=static AWS keys reach boto3 only through its environment variables; serviceAccount.roleArn (IRSA) needs no Secret at all
{{- end }}
{{- end }}

{{- define "data-feed.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "data-feed.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
A Deployment (one pod: every role is a single writer, so Recreate, never two at once) and the Service of its
http port (and further ports). Pass (dict "root" $ "name" NAME "component" C "extra" SELECTOR-LABELS
"pod" POD-ARGS "ports" PORTS "exposePorts" BOOL: PORTS on the Service too).
*/}}
{{- define "data-feed.workload" -}}
{{- $root := .root }}
{{- $selector := dict "root" $root "component" .component "extra" .extra }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "data-feed.labels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- range $k, $v := .extra }}
    {{ $k }}: {{ $v | quote }}
    {{- end }}
  annotations:
    {{- include "data-feed.checkovSkips" $root | nindent 4 }}
spec:
  replicas: 1
  revisionHistoryLimit: 3
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "data-feed.selector" $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "data-feed.labels" (dict "root" $root "component" .component) | nindent 8 }}
        {{- range $k, $v := .extra }}
        {{ $k }}: {{ $v | quote }}
        {{- end }}
      annotations:
        checksum/config: {{ include "data-feed.config" $root | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "data-feed.podSpec" (merge (dict "root" $root "ports" .ports) .pod) | nindent 6 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "data-feed.labels" (dict "root" $root "component" .component) | nindent 4 }}
    data-feed/metrics: "true"
    data-feed/job: data-feed
spec:
  type: ClusterIP
  selector:
    {{- include "data-feed.selector" $selector | nindent 4 }}
  ports:
    - name: http
      port: {{ $root.Values.httpPort }}
      targetPort: http
    {{- if .exposePorts }}
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
    {{- end }}
    {{- end }}
{{- end }}
