{{/* the components this release runs, as a JSON list */}}
{{- define "data-feed.components" -}}
{{- $components := list "bus" "collector" "aggregator" }}
{{- if .Values.featurizer.enabled }}{{ $components = append $components "featurizer" }}{{ end }}
{{- if .Values.gateway.enabled }}{{ $components = append $components "gateway" }}{{ end }}
{{- if eq (include "data-feed.redisMode" .) "builtin" }}{{ $components = append $components "redis" }}{{ end }}
{{- toJson $components }}
{{- end }}
