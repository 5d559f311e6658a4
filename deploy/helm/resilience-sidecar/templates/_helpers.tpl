{{- define "rs.image" -}}
{{- if or (eq .Values.image.tag "latest") (eq .Chart.AppVersion "latest") -}}
{{- fail "image.tag: pin a release, not latest" -}}
{{- end -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "rs.labels" -}}
app.kubernetes.io/name: resilience-injector
app.kubernetes.io/part-of: resilience-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
