{{- define "ztunnel.labels" -}}
app: ztunnel
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "ztunnel.selectorLabels" -}}
app: ztunnel
{{- end }}

{{- define "ztunnel.image" -}}
{{- printf "%s/ztunnel:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}

{{/* ztunnel's config file (ztunnel/src/config.rs `Config`, unknown fields rejected): only what has no env var. */}}
{{- define "ztunnel.configFile" -}}
controlPlane:
  address: {{ .Values.controlPlane.address | default (printf "https://istiod.%s.svc:15012" .Release.Namespace) | quote }}
  rootCert: /var/run/secrets/istio/root-cert.pem
  tlsName: {{ .Values.controlPlane.tlsName | quote }}
  tokenFile: /var/run/secrets/tokens/istio-token
{{- end }}
