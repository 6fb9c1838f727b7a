{{- define "cni.labels" -}}
app: mesh-cni
app.kubernetes.io/name: mesh-cni
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "cni.selectorLabels" -}}
app: mesh-cni
{{- end }}

{{- define "cni.image" -}}
{{- printf "%s/cni:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}
