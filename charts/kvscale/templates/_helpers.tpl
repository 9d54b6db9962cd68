{{- define "kvscale.name" -}}kvscale{{- end -}}
{{- define "kvscale.fullname" -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "kvscale.labels" -}}
app.kubernetes.io/name: kvscale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "kvscale.selector" -}}
app.kubernetes.io/name: kvscale
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
