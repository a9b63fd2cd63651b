{{- /* Object names: the release name, then the component (gpuattest-agent, gpuattest-collector). */ -}}
{{- define "gpuattest.fullname" -}}
{{ .Release.Name }}
{{- end }}

{{- define "gpuattest.labels" -}}
app.kubernetes.io/name: gpuattest
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: gpuattest-{{ .Chart.Version }}
{{- end }}

{{- define "gpuattest.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "gpuattest.podSecurity" -}}
seccompProfile:
  type: RuntimeDefault
{{- end }}
