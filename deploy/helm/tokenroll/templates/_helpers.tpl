{{/* The release's name, prefixed with "tokenroll" unless it contains it. */}}
{{- define "tokenroll.fullname" -}}
{{- if contains "tokenroll" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tokenroll" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenroll.selectorLabels" -}}
app.kubernetes.io/name: tokenroll
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenroll.labels" -}}
{{ include "tokenroll.selectorLabels" . }}
app.kubernetes.io/part-of: tokenroll
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokenroll.agentName" -}}{{ include "tokenroll.fullname" . }}-agent{{- end -}}
{{- define "tokenroll.coordinatorName" -}}{{ include "tokenroll.fullname" . }}-coordinator{{- end -}}

{{- define "tokenroll.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "tokenroll.leaseName" -}}
{{- .Values.coordinator.leaseName | default (include "tokenroll.coordinatorName" .) -}}
{{- end -}}

{{/* The gate: "auto" means "openshift" on OpenShift. */}}
{{- define "tokenroll.gate" -}}
{{- if and .Values.openshift.enabled (eq .Values.coordinator.gate "auto") -}}
openshift
{{- else -}}
{{ .Values.coordinator.gate }}
{{- end -}}
{{- end -}}

{{/* The projected API token volume, in place of the automatic one. */}}
{{- define "tokenroll.apiAccessVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
    - serviceAccountToken:
        path: token
        expirationSeconds: {{ .expirationSeconds }}
    - configMap:
        name: kube-root-ca.crt
        items:
        - key: ca.crt
          path: ca.crt
    - downwardAPI:
        items:
        - path: namespace
          fieldRef:
            fieldPath: metadata.namespace
{{- end -}}
