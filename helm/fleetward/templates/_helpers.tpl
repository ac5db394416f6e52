{{/* Names, labels and image references shared by the templates. */}}

{{- define "fleetward.fullname" -}}
{{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release; `component` names the part. */}}
{{- define "fleetward.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/component: {{ trimPrefix "fleetward-" .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fleetward
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}

{{- define "fleetward.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* A fleetward image: the override, or <registry>/<name>:<tag>. */}}
{{- define "fleetward.image" -}}
{{- $override := index .root.Values.images.overrides .name -}}
{{- if $override -}}
{{ $override }}
{{- else -}}
{{ .root.Values.images.registry }}/{{ .name }}:{{ .root.Values.images.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* A third-party image from {repository, tag}. */}}
{{- define "fleetward.thirdPartyImage" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* Cluster-scoped objects carry the namespace too: two releases of the
     same name in different namespaces must not collide. */}}
{{- define "fleetward.clusterName" -}}
{{ .Release.Name }}-{{ .Release.Namespace }}-{{ .suffix }}
{{- end }}

{{- define "fleetward.databaseSecret" -}}
{{- if and (not .Values.postgresql.enabled) .Values.database.existingSecret -}}
{{ .Values.database.existingSecret }}
{{- else -}}
{{ .Release.Name }}-database
{{- end -}}
{{- end }}

{{/* The in-cluster PostgreSQL's TLS material as JSON {ca, crt, key}: a CA
     of the release's own and the server's certificate for its Service
     names, kept across upgrades. Made once per render (postgresql.yaml
     and database-roles.yaml must agree on the CA). */}}
{{- define "fleetward.postgresqlTLS" -}}
{{- if not (hasKey .Values "__postgresqlTLS") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgresql-tls" .Release.Name) }}
{{- $tls := dict }}
{{- if and $existing $existing.data (index $existing.data "tls.key") }}
{{- $tls = dict "ca" (index $existing.data "ca.crt" | b64dec) "crt" (index $existing.data "tls.crt" | b64dec) "key" (index $existing.data "tls.key" | b64dec) }}
{{- else }}
{{- $ca := genCA (printf "%s-postgresql-ca" .Release.Name) 3650 }}
{{- $svc := printf "%s-postgresql" .Release.Name }}
{{- $dns := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- $cert := genSignedCert $svc nil $dns 3650 $ca }}
{{- $tls = dict "ca" $ca.Cert "crt" $cert.Cert "key" $cert.Key }}
{{- end }}
{{- $_ := set .Values "__postgresqlTLS" $tls }}
{{- end }}
{{- index .Values "__postgresqlTLS" | toJson }}
{{- end }}

{{/* Where the operator mounts a database Secret's ca.crt in a workload
     (operator: controllers/objects.rs DATABASE_CA_DIR). */}}
{{- define "fleetward.databaseCAFile" -}}
/var/run/fleetward/database/ca.crt
{{- end }}

{{/* Non-empty when the in-cluster Kafka runs with mutual TLS. */}}
{{- define "fleetward.kafkaTLS" -}}
{{- if and .Values.kafka.enabled .Values.kafka.tls.enabled -}}true{{- end -}}
{{- end }}

{{/* Every name the in-cluster broker is reached by (its certificate's). */}}
{{- define "fleetward.kafkaServerNames" -}}
{{- $name := printf "%s-kafka" .Release.Name -}}
{{- $ns := .Release.Namespace -}}
{{- $pod := printf "%s-0.%s-headless" $name $name -}}
{{- list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) (printf "%s.%s.svc" $pod $ns) (printf "%s.%s.svc.cluster.local" $pod $ns) "localhost" | join "," -}}
{{- end }}

{{- define "fleetward.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{ .Release.Name }}-kafka.{{ .Release.Namespace }}.svc.cluster.local:9092
{{- else -}}
{{ required "kafka.bootstrapServers is required when kafka.enabled is false" .Values.kafka.bootstrapServers }}
{{- end -}}
{{- end }}

{{/* Container hardening shared by the chart's own pods. */}}
{{- define "fleetward.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ . }}
capabilities: {drop: [ALL]}
{{- end }}

{{- define "fleetward.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A volume claim template or an emptyDir, from a persistence block. */}}
{{- define "fleetward.volumeClaim" -}}
- metadata:
    name: data
    labels: {{- include "fleetward.selector" (dict "root" .root "component" .component) | nindent 6 }}
  spec:
    accessModes: [ReadWriteOnce]
    {{- with .persistence.storageClass }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ .persistence.size }}
{{- end }}
