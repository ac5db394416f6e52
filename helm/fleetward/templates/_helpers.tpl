{{- define "fleetward.labels" -}}
app.kubernetes.io/name: fleetward-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "fleetward.selector" -}}
app.kubernetes.io/name: fleetward-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleetward.name" -}}
{{ .Release.Name }}-operator
{{- end }}
