{{/* Labels every object of the chart carries. */}}
{{- define "control.labels" -}}
app: control
app.kubernetes.io/name: control
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The Deployment's selector: immutable, so kept minimal. */}}
{{- define "control.selectorLabels" -}}
app: control
{{- end }}

{{- define "control.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end }}

{{- define "control.image" -}}
{{- printf "%s/control:%s" .Values.image.repository (include "control.tag" .) -}}
{{- end }}

{{- define "control.waypointImage" -}}
{{- .Values.waypoint.image | default (printf "%s/waypoint:%s" .Values.image.repository (include "control.tag" .)) -}}
{{- end }}

{{- define "control.replicasWanted" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end -}}
{{- end }}

{{- define "control.configFile" -}}
waypointDeployment:
  image: {{ include "control.waypointImage" . | quote }}
  controlPlaneAddress: {{ printf "https://%s.%s.svc:15012" .Values.service.name .Release.Namespace | quote }}
nodeProxyServiceAccounts:
{{- if .Values.nodeProxyServiceAccounts }}
{{- range .Values.nodeProxyServiceAccounts }}
  - {{ . | quote }}
{{- end }}
{{- else }}
  - {{ printf "%s/ztunnel" .Release.Namespace | quote }}
{{- end }}
{{- if .Values.pluginCa.enabled }}
pluginCa:
  certChain: /etc/cacerts/cert-chain.pem
  key: /etc/cacerts/ca-key.pem
{{- end }}
{{- end }}
