//! The Helm chart `charts/s2z`, generated from `manifests/base` so that the two never drift.
//!
//! * `chart_is_generated_from_manifests_base` regenerates the chart and fails when the committed
//!   one differs (`make chart` rewrites it, as `make generate` does for the CRD);
//! * `helm_template_renders_what_kustomize_renders` checks that the real Helm (tests/helm)
//!   renders exactly the objects the real `kubectl kustomize` renders for the base and for each
//!   TLS overlay, and that each templated value changes only its own fields;
//! * `helm_installs_upgrades_and_uninstalls_the_chart` runs the real Helm against a private local
//!   control plane (its own state directory, started and stopped by the test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use s2z_tests::env::eventually;
use s2z_tests::plane::{Plane, client_for, repo_root};
use serde_json::{Value, json};

/// The chart, relative to the repository root.
const CHART: &str = "charts/s2z";
/// The namespace manifests/base installs into; the chart uses the release's namespace instead.
const BASE_NAMESPACE: &str = "s2z-system";
/// The serving certificate's Secret in manifests/base; the chart's `tls.secretName`.
const BASE_TLS_SECRET: &str = "s2z-webhook-tls";

// ---------------------------------------------------------------------------------------------
// The generator: manifests/base (plus the cert-manager overlay's Certificates) -> charts/s2z.
//
// It edits the base's text rather than re-serialising parsed YAML, so that the templates keep
// the base's comments and layout, and so that YAML 1.1 scalars such as `defaultMode: 0440`
// reach Helm exactly as kubectl reads them. Every edit is anchored on lines it must find; when
// the base changes shape, generation fails and says which anchor is missing.
// ---------------------------------------------------------------------------------------------

/// The chart's files, by path under charts/s2z.
type Files = BTreeMap<String, String>;

/// The base's values that become the chart's defaults, read from manifests/base/deployment.yaml.
#[derive(Default)]
struct Defaults {
    replicas: Option<String>,
    image_repository: Option<String>,
    image_tag: Option<String>,
    pull_policy: Option<String>,
    /// The container's `resources:` block, comments included, indented for values.yaml.
    resources: Option<String>,
}

/// What a template's metadata gains besides the labels: annotations under a Helm condition.
struct Annotations {
    condition: &'static str,
    pairs: Vec<(String, String)>,
}

fn generate(root: &Path) -> Result<Files> {
    let base_kustomization = read_yaml(&root.join("manifests/base/kustomization.yaml"))?;
    let (resources, labels) = base_kustomization_parts(&base_kustomization)?;
    let cert_manager = cert_manager_overlay(root)?;

    let mut files = Files::new();
    let mut defaults = Defaults::default();
    for resource in &resources {
        let source = format!("manifests/base/{resource}");
        let text = read(&root.join(&source))?;
        let templated = template_file(&source, &text, None, &cert_manager, &mut defaults)
            .with_context(|| format!("failed to template {source}"))?;
        files.insert(format!("templates/{resource}"), templated);
    }
    let source = "manifests/overlays/cert-manager/certificate.yaml";
    let text = read(&root.join(source))?;
    let templated = template_file(
        source,
        &text,
        Some(".Values.tls.certManager.enabled"),
        &cert_manager,
        &mut defaults,
    )
    .with_context(|| format!("failed to template {source}"))?;
    files.insert("templates/certificate.yaml".into(), templated);

    files.insert("templates/tls-secret.yaml".into(), TLS_SECRET.into());
    files.insert("templates/_helpers.tpl".into(), helpers(&labels));
    files.insert("templates/NOTES.txt".into(), NOTES.into());
    files.insert("values.yaml".into(), values_yaml(&defaults)?);
    files.insert("Chart.yaml".into(), chart_yaml());
    files.insert(".helmignore".into(), HELMIGNORE.into());
    Ok(files)
}

/// The base's resources and common labels. Any other kustomization field would change the
/// rendered objects in a way the generator does not reproduce, so it stops generation.
/// Label names and values, in order.
type Labels = Vec<(String, String)>;

fn base_kustomization_parts(k: &Value) -> Result<(Vec<String>, Labels)> {
    let known = ["apiVersion", "kind", "labels", "resources"];
    for key in k
        .as_object()
        .context("kustomization.yaml is not a mapping")?
        .keys()
    {
        ensure!(
            known.contains(&key.as_str()),
            "manifests/base/kustomization.yaml has `{key}:`, which the chart generator \
             (tests/tests/helm_chart.rs) does not reproduce: teach it, or move the change to an overlay"
        );
    }
    let resources = k["resources"]
        .as_array()
        .context("manifests/base/kustomization.yaml has no resources")?
        .iter()
        .map(|r| {
            r.as_str()
                .filter(|r| !r.contains('/'))
                .map(str::to_string)
                .with_context(|| format!("resource {r} is not a file of manifests/base"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut labels = Vec::new();
    for entry in k["labels"].as_array().into_iter().flatten() {
        for key in entry
            .as_object()
            .context("a labels entry is not a mapping")?
            .keys()
        {
            ensure!(
                key == "pairs",
                "manifests/base/kustomization.yaml labels have `{key}:`, which the chart generator does not reproduce"
            );
        }
        for (name, value) in entry["pairs"].as_object().into_iter().flatten() {
            let value = value.as_str().context("a label value is not a string")?;
            labels.push((name.clone(), value.to_string()));
        }
    }
    Ok((resources, labels))
}

/// The annotations the cert-manager overlay patches into the webhook configuration (cainjector's
/// `inject-ca-from`), checked to be the overlay's only change besides its Certificates.
fn cert_manager_overlay(root: &Path) -> Result<Annotations> {
    let path = root.join("manifests/overlays/cert-manager/kustomization.yaml");
    let k = read_yaml(&path)?;
    let what = "manifests/overlays/cert-manager/kustomization.yaml";
    ensure!(
        k["resources"] == json!(["../../base", "certificate.yaml"]),
        "{what}: resources are not [../../base, certificate.yaml]; teach the chart generator"
    );
    for key in k.as_object().context("not a mapping")?.keys() {
        ensure!(
            ["apiVersion", "kind", "labels", "resources", "patches"].contains(&key.as_str()),
            "{what} has `{key}:`, which the chart generator does not reproduce"
        );
    }
    let mut pairs = Vec::new();
    for patch in k["patches"].as_array().into_iter().flatten() {
        ensure!(
            patch["target"]["kind"] == "MutatingWebhookConfiguration",
            "{what}: a patch that does not target the MutatingWebhookConfiguration; teach the chart generator"
        );
        let body: Value = serde_yaml::from_str(patch["patch"].as_str().unwrap_or_default())
            .with_context(|| format!("{what}: a patch is not YAML"))?;
        let metadata = body["metadata"]
            .as_object()
            .context("patch without metadata")?;
        ensure!(
            metadata.keys().all(|k| k == "name" || k == "annotations")
                && body.get("webhooks").is_none(),
            "{what}: the patch changes more than annotations; teach the chart generator"
        );
        for (key, value) in body["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let value = value
                .as_str()
                .context("an annotation value is not a string")?;
            pairs.push((key.clone(), templated_tokens(value)));
        }
    }
    ensure!(
        !pairs.is_empty(),
        "{what}: no annotations patched into the webhook configuration"
    );
    Ok(Annotations {
        condition: ".Values.tls.certManager.enabled",
        pairs,
    })
}

/// One file of the base (or overlay) turned into a template: each YAML document gets the chart's
/// labels, the release namespace and the templated values; `condition` wraps the whole file.
fn template_file(
    source: &str,
    text: &str,
    condition: Option<&str>,
    cert_manager: &Annotations,
    defaults: &mut Defaults,
) -> Result<String> {
    let mut docs: Vec<Vec<String>> = vec![Vec::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(Vec::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push(line.to_string());
        }
    }
    let mut out = vec![format!(
        "# Generated from {source} by `make chart`. Do not edit by hand."
    )];
    if let Some(condition) = condition {
        out.push(format!("{{{{- if {condition} }}}}"));
    }
    for (i, doc) in docs.into_iter().enumerate() {
        if i > 0 {
            out.push("---".into());
        }
        out.extend(template_doc(doc, cert_manager, defaults)?);
    }
    if condition.is_some() {
        out.push("{{- end }}".into());
    }
    let rendered = out.join("\n") + "\n";
    for line in rendered.lines() {
        let code = !line.trim_start().starts_with('#');
        ensure!(
            !(code && (line.contains(BASE_NAMESPACE) || line.contains(BASE_TLS_SECRET))),
            "`{line}` still names {BASE_NAMESPACE} or {BASE_TLS_SECRET}"
        );
    }
    Ok(rendered)
}

fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The base's fixed names that the chart takes from the release or the values.
fn templated_tokens(line: &str) -> String {
    line.replace(BASE_NAMESPACE, "{{ .Release.Namespace }}")
        .replace(BASE_TLS_SECRET, "{{ .Values.tls.secretName }}")
}

fn template_doc(
    mut lines: Vec<String>,
    cert_manager: &Annotations,
    defaults: &mut Defaults,
) -> Result<Vec<String>> {
    if lines.iter().all(|l| is_comment_or_blank(l)) {
        return Ok(lines);
    }
    let kind = lines
        .iter()
        .find_map(|l| l.strip_prefix("kind: "))
        .context("a document without a top-level `kind:`")?
        .trim()
        .to_string();
    for line in lines.iter_mut() {
        if !is_comment_or_blank(line) {
            *line = templated_tokens(line);
        }
    }
    let mut annotations = None;
    match kind.as_str() {
        "Deployment" => template_deployment(&mut lines, defaults)?,
        "ConfigMap" => template_settings(&mut lines)?,
        "MutatingWebhookConfiguration" => {
            template_ca_bundle(&mut lines)?;
            annotations = Some(cert_manager);
        }
        _ => {}
    }
    let keep = Annotations {
        condition: ".Values.crds.keep",
        pairs: vec![("helm.sh/resource-policy".into(), "keep".into())],
    };
    if kind == "CustomResourceDefinition" {
        annotations = Some(&keep);
    }
    template_metadata(&mut lines, annotations).with_context(|| format!("in the {kind}"))?;
    if kind == "Namespace" {
        let first = lines
            .iter()
            .position(|l| !is_comment_or_blank(l))
            .unwrap_or(0);
        lines.insert(first, "{{- if .Values.createNamespace }}".into());
        lines.push("{{- end }}".into());
    }
    Ok(lines)
}

/// Adds the chart's labels (and `annotations`, if any) to the top-level metadata.
fn template_metadata(lines: &mut Vec<String>, annotations: Option<&Annotations>) -> Result<()> {
    let start = lines
        .iter()
        .position(|l| l == "metadata:")
        .context("no top-level `metadata:`")?;
    let end = (start + 1..lines.len())
        .find(|&i| !(lines[i].is_empty() || lines[i].starts_with(' ')))
        .unwrap_or(lines.len());
    let find = |prefix: &str| (start + 1..end).find(|&i| lines[i].starts_with(prefix));
    let name = find("  name: ").context("no metadata.name")?;
    let mut inserts: Vec<(usize, Vec<String>)> = Vec::new();
    let include = "    {{- include \"s2z.labels\" . | nindent 4 }}".to_string();
    match find("  labels:") {
        Some(labels) => inserts.push((labels + 1, vec![include])),
        None => inserts.push((name + 1, vec!["  labels:".into(), include])),
    }
    if let Some(a) = annotations {
        ensure!(
            find("  annotations:").is_none(),
            "metadata.annotations already exist; teach the chart generator to merge them"
        );
        let mut block = vec![
            format!("  {{{{- if {} }}}}", a.condition),
            "  annotations:".into(),
        ];
        block.extend(a.pairs.iter().map(|(k, v)| format!("    {k}: {v}")));
        block.push("  {{- end }}".into());
        inserts.push((name + 1, block));
    }
    // From the bottom up, so that earlier indexes stay valid.
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, block) in inserts {
        lines.splice(at..at, block);
    }
    Ok(())
}

/// The one line of the Deployment whose trimmed text starts with `prefix`, as (index, indent,
/// value after the prefix).
fn one_line(lines: &[String], prefix: &str) -> Result<(usize, usize, String)> {
    let found: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with(prefix))
        .collect();
    ensure!(
        found.len() == 1,
        "expected exactly one line starting with `{prefix}` in the Deployment of \
         manifests/base/deployment.yaml, found {}; teach the chart generator \
         (tests/tests/helm_chart.rs) the new layout",
        found.len()
    );
    let line = &lines[found[0]];
    let indent = line.len() - line.trim_start().len();
    Ok((
        found[0],
        indent,
        line.trim_start()[prefix.len()..].trim().to_string(),
    ))
}

fn template_deployment(lines: &mut Vec<String>, d: &mut Defaults) -> Result<()> {
    let (i, indent, replicas) = one_line(lines, "replicas: ")?;
    ensure!(
        replicas.parse::<u32>().is_ok(),
        "replicas `{replicas}` is not a number"
    );
    lines[i] = format!("{}replicas: {{{{ .Values.replicas }}}}", " ".repeat(indent));
    d.replicas = Some(replicas);

    let (i, indent, image) = one_line(lines, "image: ")?;
    let (repository, tag) = image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/') && !image.contains('@'))
        .with_context(|| format!("image `{image}` is not repository:tag"))?;
    lines[i] = format!(
        "{}image: \"{{{{ .Values.image.repository }}}}:{{{{ .Values.image.tag }}}}\"",
        " ".repeat(indent)
    );
    d.image_repository = Some(repository.to_string());
    d.image_tag = Some(tag.to_string());

    let (i, indent, policy) = one_line(lines, "imagePullPolicy: ")?;
    lines[i] = format!(
        "{}imagePullPolicy: {{{{ .Values.image.pullPolicy }}}}",
        " ".repeat(indent)
    );
    d.pull_policy = Some(policy);

    // The container's resources block: every following line indented deeper (or blank).
    let (i, indent, rest) = one_line(lines, "resources:")?;
    ensure!(rest.is_empty(), "`resources:` is not a block");
    let end = (i + 1..lines.len())
        .find(|&j| {
            let l = &lines[j];
            !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent
        })
        .unwrap_or(lines.len());
    let block: Vec<String> = lines[i + 1..end]
        .iter()
        .map(|l| match l.get(indent + 2..) {
            Some(rest) if !l.trim().is_empty() => format!("  {rest}"),
            _ => String::new(),
        })
        .collect();
    ensure!(
        !block.is_empty(),
        "the Deployment's resources block is empty"
    );
    d.resources = Some(block.join("\n"));
    let inner = indent + 2;
    lines.splice(
        i + 1..end,
        [format!(
            "{}{{{{- toYaml .Values.resources | nindent {inner} }}}}",
            " ".repeat(inner)
        )],
    );
    Ok(())
}

/// The settings ConfigMap: each default holds unless the live ConfigMap already has a value, so
/// that `helm upgrade` keeps what operators set with `kubectl s2z settings set` (`lookup` finds
/// nothing in `helm template`, which therefore renders the base's defaults).
fn template_settings(lines: &mut Vec<String>) -> Result<()> {
    let name = lines
        .iter()
        .find_map(|l| l.strip_prefix("  name: "))
        .context("a ConfigMap without a name")?
        .trim()
        .to_string();
    let data = lines
        .iter()
        .position(|l| l == "data:")
        .with_context(|| format!("ConfigMap {name} has no `data:`"))?;
    let mut settings = 0;
    for line in lines[data + 1..].iter_mut() {
        if !line.starts_with("  ") {
            break;
        }
        if is_comment_or_blank(line) {
            continue;
        }
        let (key, value) = line
            .trim()
            .split_once(": ")
            .with_context(|| format!("`{line}` is not `key: value`"))?;
        let value: String = serde_yaml::from_str(value)
            .with_context(|| format!("`{line}`: the value is not a string"))?;
        *line = format!("  {key}: {{{{ get $live {key:?} | default {value:?} | quote }}}}");
        settings += 1;
    }
    ensure!(settings > 0, "ConfigMap {name} has no settings");
    lines.splice(
        data + 1..data + 1,
        [
            "  {{- /* Settings on the cluster (kubectl s2z settings set) win over these defaults. */}}".into(),
            format!("  {{{{- $live := dig \"data\" (dict) (lookup \"v1\" \"ConfigMap\" .Release.Namespace {name:?}) }}}}"),
        ],
    );
    Ok(())
}

/// The webhook configuration's `caBundle`, from `tls.cert` or `tls.caBundle` when set (the
/// self-signed overlay's replacement); cert-manager's cainjector fills it otherwise.
fn template_ca_bundle(lines: &mut Vec<String>) -> Result<()> {
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start() == "clientConfig:")
        .collect();
    ensure!(!at.is_empty(), "no webhooks[].clientConfig");
    for &i in at.iter().rev() {
        let pad = " ".repeat(lines[i].len() - lines[i].trim_start().len() + 2);
        lines.splice(
            i + 1..i + 1,
            [
                format!("{pad}{{{{- with include \"s2z.caBundle\" . }}}}"),
                format!("{pad}caBundle: {{{{ . }}}}"),
                format!("{pad}{{{{- end }}}}"),
            ],
        );
    }
    Ok(())
}

fn helpers(labels: &[(String, String)]) -> String {
    let base_labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    format!(
        r#"{{{{/* Generated by `make chart` (tests/tests/helm_chart.rs). Do not edit by hand. */}}}}

{{{{/*
Labels of every object: those of manifests/base/kustomization.yaml, and Helm's usual ones.
*/}}}}
{{{{- define "s2z.labels" -}}}}
{base_labels}app.kubernetes.io/managed-by: {{{{ .Release.Service }}}}
app.kubernetes.io/instance: {{{{ .Release.Name }}}}
helm.sh/chart: {{{{ .Chart.Name }}}}-{{{{ .Chart.Version | replace "+" "_" }}}}
{{{{- end }}}}

{{{{/*
The webhook configuration's caBundle (base64 PEM): the certificate given in tls.cert is its own
CA; tls.caBundle is the CA of a Secret made beforehand; with cert-manager, cainjector fills it.
*/}}}}
{{{{- define "s2z.caBundle" -}}}}
{{{{- if and .Values.tls.certManager.enabled (or .Values.tls.cert .Values.tls.caBundle) -}}}}
{{{{- fail "tls.certManager.enabled: cert-manager provides the certificate and its CA; leave tls.cert, tls.key and tls.caBundle empty" -}}}}
{{{{- else if and .Values.tls.cert .Values.tls.caBundle -}}}}
{{{{- fail "tls.cert is its own CA: leave tls.caBundle empty when setting tls.cert" -}}}}
{{{{- else if .Values.tls.cert -}}}}
{{{{- .Values.tls.cert | b64enc -}}}}
{{{{- else -}}}}
{{{{- .Values.tls.caBundle -}}}}
{{{{- end -}}}}
{{{{- end }}}}
"#
    )
}

/// The Secret of manifests/overlays/self-signed (its secretGenerator), from `tls.cert`/`tls.key`.
const TLS_SECRET: &str = r#"# Generated by `make chart`: the serving certificate given as values, as the secretGenerator of
# manifests/overlays/self-signed makes it. Do not edit by hand.
{{- if or .Values.tls.cert .Values.tls.key }}
{{- if not (and .Values.tls.cert .Values.tls.key) }}
{{- fail "tls.cert and tls.key go together: --set-file tls.cert=tls.crt,tls.key=tls.key" }}
{{- end }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .Values.tls.secretName }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "s2z.labels" . | nindent 4 }}
type: kubernetes.io/tls
data:
  tls.crt: {{ .Values.tls.cert | b64enc }}
  tls.key: {{ .Values.tls.key | b64enc }}
{{- end }}
"#;

const NOTES: &str = r#"s2z {{ .Chart.AppVersion }} is installed in the namespace {{ .Release.Namespace }}.
{{- if not (or .Values.tls.certManager.enabled .Values.tls.cert .Values.tls.caBundle) }}

The webhook serves with the Secret {{ .Values.tls.secretName }}, which this release does not make:
create it (type kubernetes.io/tls, for s2z-webhook.{{ .Release.Namespace }}.svc) and set
tls.caBundle to its CA, or use tls.certManager.enabled=true, or give tls.cert and tls.key.
Until the API server trusts the webhook, Revisions are admitted unchanged (failurePolicy Ignore).
{{- end }}

Orgs: kubectl get orgs.s2z.dev    Plugin: kubectl s2z status
"#;

const HELMIGNORE: &str =
    "# Generated by `make chart`. Do not edit by hand.\n.git/\n*.orig\n*.rej\n*~\n";

fn values_yaml(d: &Defaults) -> Result<String> {
    let missing = "manifests/base/deployment.yaml: no Deployment found for the chart's values";
    let replicas = d.replicas.as_deref().context(missing)?;
    let repository = d.image_repository.as_deref().context(missing)?;
    let tag = d.image_tag.as_deref().context(missing)?;
    let policy = d.pull_policy.as_deref().context(missing)?;
    let resources = d.resources.as_deref().context(missing)?;
    Ok(format!(
        r#"# Values of the s2z chart. Generated from manifests/base by `make chart`; do not edit by hand.
# The defaults are the base's own: with them the chart renders what `kubectl kustomize
# manifests/base` renders, in the release's namespace, without the Namespace object (see
# createNamespace).

image:
  repository: {repository}
  tag: "{tag}"
  pullPolicy: {policy}

# Webhook replicas. Every replica serves /mutate and the activity endpoint; the one holding the
# Lease s2z-controller runs the dormancy controller. The PodDisruptionBudget keeps one available.
replicas: {replicas}

# The webhook container's resources (from manifests/base/deployment.yaml).
resources:
{resources}

# Also create the release namespace, labelled as manifests/base/namespace.yaml labels
# s2z-system. Leave it false with `helm install --create-namespace` or an existing namespace:
# Helm will not install a Namespace object over a namespace it did not create.
createNamespace: false

crds:
  # Keep the Org CRD on `helm uninstall`: deleting it would delete every Org with it. Delete it
  # by hand when you mean to (kubectl delete crd orgs.s2z.dev); reinstalling adopts it again.
  keep: true

# The webhook's serving certificate. The API server calls the webhook over TLS and must trust
# it: give one of certManager.enabled, cert and key, or caBundle (with a Secret made beforehand).
tls:
  # The kubernetes.io/tls Secret mounted at /tls; the webhook reloads it in place when it rotates.
  secretName: {BASE_TLS_SECRET}
  # cert-manager (v1.x, installed beforehand) issues a private CA and the serving certificate,
  # and its cainjector puts the CA into the webhook configuration (manifests/overlays/cert-manager).
  certManager:
    enabled: false
  # Your own certificate and key (PEM), as manifests/overlays/self-signed: the chart makes the
  # Secret and trusts the certificate as its own CA. It must name s2z-webhook.<namespace>.svc.
  # Pass the files: --set-file tls.cert=tls.crt --set-file tls.key=tls.key
  cert: ""
  key: ""
  # With a Secret made beforehand (named secretName): the CA that signed it, base64-encoded PEM,
  # for the webhook configuration's caBundle.
  caBundle: ""
"#
    ))
}

fn chart_yaml() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let repository = env!("CARGO_PKG_REPOSITORY");
    format!(
        r#"# Generated by `make chart` from the workspace version (Cargo.toml). Do not edit by hand.
apiVersion: v2
name: s2z
description: "Org-level scale to zero for Knative and KServe: the s2z-webhook Deployment (admission webhook, dormancy controller, activity endpoint), the Org CRD, RBAC and settings."
type: application
version: {version}
appVersion: "{version}"
home: {repository}
sources:
  - {repository}
"#
    )
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

fn read_yaml(path: &Path) -> Result<Value> {
    serde_yaml::from_str(&read(path)?)
        .with_context(|| format!("failed to parse {}", path.display()))
}

#[test]
fn chart_is_generated_from_manifests_base() -> Result<()> {
    let root = repo_root();
    let chart = root.join(CHART);
    let files = generate(&root)?;
    let on_disk = chart_files(&chart)?;
    if std::env::var_os("S2Z_UPDATE_GENERATED").is_some() {
        for stale in on_disk.difference(&files.keys().cloned().collect()) {
            std::fs::remove_file(chart.join(stale))
                .with_context(|| format!("failed to remove {CHART}/{stale}"))?;
        }
        for (path, content) in &files {
            let path = chart.join(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("failed to create {}", dir.display()))?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        return Ok(());
    }
    let mut stale = Vec::new();
    for (path, content) in &files {
        match std::fs::read_to_string(chart.join(path)) {
            Ok(committed) if &committed == content => {}
            Ok(_) => stale.push(format!("{CHART}/{path} differs")),
            Err(_) => stale.push(format!("{CHART}/{path} is missing")),
        }
    }
    for extra in on_disk.iter().filter(|p| !files.contains_key(*p)) {
        stale.push(format!("{CHART}/{extra} is not generated"));
    }
    ensure!(
        stale.is_empty(),
        "the Helm chart is stale against manifests/base: {}; run `make chart` and commit {CHART}",
        stale.join(", ")
    );
    Ok(())
}

/// Every file under the chart directory, relative to it.
fn chart_files(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("failed to list {}", d.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The real Helm and the real kubectl.
// ---------------------------------------------------------------------------------------------

/// tests/helm/bin/helm with its own config, cache and data directories, so that a developer's
/// Helm repositories and plugins play no part.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Result<Self> {
        let bin = repo_root().join("tests/helm/bin/helm");
        ensure!(
            bin.exists(),
            "{} is not built: run tests/helm/build (`make build` does)",
            bin.display()
        );
        Ok(Self {
            bin,
            home: tempfile::tempdir().context("failed to make Helm's home")?,
        })
    }

    fn command(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).current_dir(repo_root());
        for (var, dir) in [
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        match kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            // `helm template` needs no cluster; an empty KUBECONFIG keeps it from finding one.
            None => cmd.env("KUBECONFIG", self.home.path().join("no-kubeconfig")),
        };
        cmd
    }

    /// Runs helm and returns its stdout, failing with its output when it fails.
    fn run(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Result<String> {
        let out = self
            .command(kubeconfig, args)
            .output()
            .with_context(|| format!("failed to run {}", self.bin.display()))?;
        checked("helm", args, out)
    }

    /// `helm template s2z charts/s2z -n <namespace> ARGS...`, read as kustomize reads YAML.
    fn template(&self, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
        let mut all = vec!["template", "s2z", CHART, "--namespace", namespace];
        all.extend_from_slice(args);
        let rendered = self.run(None, &all)?;
        // kustomize reads YAML as the API's clients do (YAML 1.1: `defaultMode: 0440` is octal)
        // and writes it back normalised, so Helm's output goes through it too before comparing.
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("helm.yaml"), rendered)?;
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [helm.yaml]\n",
        )?;
        kustomize(dir.path())
    }
}

fn checked(program: &str, args: &[&str], out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).with_context(|| format!("{program} wrote non-UTF-8"))
}

/// The real kubectl built by tests/cluster; `kustomize` needs no running plane.
fn kubectl_bin() -> Result<PathBuf> {
    let bin = repo_root().join("tests/cluster/bin/kubectl");
    ensure!(
        bin.exists(),
        "{} is not built: run tests/cluster/build (`make build` does)",
        bin.display()
    );
    Ok(bin)
}

fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let dir = dir.to_string_lossy();
    let args = ["kustomize", dir.as_ref()];
    let out = Command::new(kubectl_bin()?)
        .args(args)
        .output()
        .context("failed to run kubectl")?;
    parse_stream(&checked("kubectl", &args, out)?)
}

/// A YAML stream as JSON values, without empty (comment-only) documents.
fn parse_stream(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = <Value as serde::Deserialize>::deserialize(doc).context("invalid YAML")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn object_key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{} {} {}/{}",
        obj["apiVersion"].as_str().unwrap_or("?"),
        obj["kind"].as_str().unwrap_or("?"),
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("?")
    )
}

/// Removes what the chart adds for Helm's sake, after checking it: the labels charts
/// conventionally carry, and the CRD's resource policy (`crds.keep`).
fn without_helm_labels(mut obj: Value, release: &str) -> Result<Value> {
    let key = object_key(&obj);
    if obj["kind"] == "CustomResourceDefinition" {
        let annotations = obj["metadata"]
            .as_object_mut()
            .and_then(|m| m.remove("annotations"));
        ensure!(
            annotations == Some(json!({"helm.sh/resource-policy": "keep"})),
            "{key}: annotations are {annotations:?}, not Helm's resource policy keep"
        );
    }
    let labels = obj["metadata"]["labels"]
        .as_object_mut()
        .with_context(|| format!("{key} has no labels"))?;
    let want = [
        ("app.kubernetes.io/managed-by", "Helm".to_string()),
        ("app.kubernetes.io/instance", release.to_string()),
        (
            "helm.sh/chart",
            format!("s2z-{}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    for (label, value) in want {
        ensure!(
            labels.remove(label) == Some(Value::String(value.clone())),
            "{key}: label {label} is not {value}"
        );
    }
    Ok(obj)
}

/// Every path where `a` and `b` differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(&p, u, v, out),
                    (Some(u), None) => out.push(format!("{p}: {u} only in kustomize")),
                    (None, Some(v)) => out.push(format!("{p}: {v} only in helm")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), u, v, out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: kustomize {a} != helm {b}")),
    }
}

/// Base64 fields without line breaks: kustomize's secretGenerator (and the replacement that copies
/// its certificate into the caBundle) wraps them at 76 columns, which decodes to the same bytes.
fn unwrapped_base64(mut obj: Value) -> Value {
    let unwrap = |v: &mut Value| {
        if let Value::String(s) = v {
            s.retain(|c| c != '\n');
        }
    };
    if obj["kind"] == "Secret"
        && let Some(data) = obj["data"].as_object_mut()
    {
        data.values_mut().for_each(unwrap);
    }
    if let Some(hooks) = obj["webhooks"].as_array_mut() {
        for hook in hooks {
            if let Some(ca) = hook["clientConfig"].get_mut("caBundle") {
                unwrap(ca);
            }
        }
    }
    obj
}

/// Fails unless `helm` holds the same objects as `kustomize` (Helm's labels aside), naming every
/// missing or extra object and every differing field.
fn same_objects(what: &str, kustomize: Vec<Value>, helm: Vec<Value>) -> Result<()> {
    let index = |objs: Vec<Value>| -> BTreeMap<String, Value> {
        objs.into_iter()
            .map(|o| (object_key(&o), unwrapped_base64(o)))
            .collect()
    };
    let (k, h) = (index(kustomize), index(helm));
    let mut problems = Vec::new();
    for key in k.keys().filter(|key| !h.contains_key(*key)) {
        problems.push(format!("{key} only in kustomize"));
    }
    for key in h.keys().filter(|key| !k.contains_key(*key)) {
        problems.push(format!("{key} only in helm"));
    }
    for (key, a) in &k {
        if let Some(b) = h.get(key) {
            diff(key, a, b, &mut problems);
        }
    }
    ensure!(
        problems.is_empty(),
        "{what}: helm template and kubectl kustomize differ:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

/// Replaces `from` in every string of `v` (names, namespaces, DNS names, annotations).
fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|i| replace_strings(i, from, to)),
        Value::Object(map) => map.values_mut().for_each(|i| replace_strings(i, from, to)),
        _ => {}
    }
}

/// A self-signed serving certificate for the Service in `namespace`, written as tls.crt and
/// tls.key into `dir`.
fn write_serving_cert(dir: &Path, namespace: &str) -> Result<(PathBuf, PathBuf, String)> {
    let names = vec![
        format!("s2z-webhook.{namespace}.svc"),
        format!("s2z-webhook.{namespace}.svc.cluster.local"),
    ];
    let ck = rcgen::generate_simple_self_signed(names).context("failed to make a certificate")?;
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let pem = ck.cert.pem();
    std::fs::write(&crt, &pem).context("failed to write tls.crt")?;
    std::fs::write(&key, ck.signing_key.serialize_pem()).context("failed to write tls.key")?;
    Ok((crt, key, pem))
}

#[test]
fn helm_template_renders_what_kustomize_renders() -> Result<()> {
    let root = repo_root();
    let helm = Helm::new()?;
    let strip = |objs: Vec<Value>| -> Result<Vec<Value>> {
        objs.into_iter()
            .map(|o| without_helm_labels(o, "s2z"))
            .collect()
    };
    helm.run(None, &["lint", "--strict", CHART])?;

    // The base: the same objects, the Namespace only with createNamespace (Helm's
    // --create-namespace makes it otherwise).
    let base = kustomize(&root.join("manifests/base"))?;
    let with_ns = strip(helm.template(BASE_NAMESPACE, &["--set", "createNamespace=true"])?)?;
    same_objects("base, createNamespace=true", base.clone(), with_ns)?;
    let base_without_ns: Vec<Value> = base
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .cloned()
        .collect();
    ensure!(
        base_without_ns.len() + 1 == base.len(),
        "the base has no Namespace"
    );
    same_objects(
        "base, default values",
        base_without_ns.clone(),
        strip(helm.template(BASE_NAMESPACE, &[])?)?,
    )?;

    // cert-manager: the overlay's Issuers, Certificates and cainjector annotation.
    let overlay = kustomize(&root.join("manifests/overlays/cert-manager"))?;
    let args = [
        "--set",
        "createNamespace=true",
        "--set",
        "tls.certManager.enabled=true",
    ];
    same_objects(
        "overlays/cert-manager, tls.certManager.enabled=true",
        overlay,
        strip(helm.template(BASE_NAMESPACE, &args)?)?,
    )?;

    // self-signed: the overlay's Secret from the same files, and the caBundle.
    let tmp = tempfile::tempdir()?;
    let status = Command::new("cp")
        .args(["-r", "manifests"])
        .arg(tmp.path())
        .current_dir(&root)
        .status()
        .context("failed to run cp")?;
    ensure!(status.success(), "failed to copy manifests/");
    let overlay_dir = tmp.path().join("manifests/overlays/self-signed");
    let (crt, key, _) = write_serving_cert(&overlay_dir, BASE_NAMESPACE)?;
    let (crt, key) = (
        format!("tls.cert={}", crt.display()),
        format!("tls.key={}", key.display()),
    );
    let args = [
        "--set",
        "createNamespace=true",
        "--set-file",
        &crt,
        "--set-file",
        &key,
    ];
    same_objects(
        "overlays/self-signed, tls.cert and tls.key",
        kustomize(&overlay_dir)?,
        strip(helm.template(BASE_NAMESPACE, &args)?)?,
    )?;

    // Each templated value changes its own fields and nothing else.
    let mut want = base_without_ns;
    for obj in &mut want {
        replace_strings(obj, BASE_NAMESPACE, "elsewhere");
        replace_strings(obj, BASE_TLS_SECRET, "my-tls");
        if obj["kind"] == "Deployment" {
            obj["spec"]["replicas"] = json!(5);
            let c = &mut obj["spec"]["template"]["spec"]["containers"][0];
            c["image"] = json!("registry.example/s2z-webhook:9.9.9");
            c["imagePullPolicy"] = json!("Always");
            c["resources"] =
                json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}});
        }
        if obj["kind"] == "MutatingWebhookConfiguration" {
            obj["webhooks"][0]["clientConfig"]["caBundle"] = json!("Q0E=");
        }
    }
    let args = [
        "--set",
        "replicas=5,image.repository=registry.example/s2z-webhook,image.tag=9.9.9",
        "--set",
        "image.pullPolicy=Always,tls.secretName=my-tls,tls.caBundle=Q0E=",
        "--set-json",
        r#"resources={"requests":{"cpu":"1","memory":"1Gi"},"limits":{"memory":"2Gi"}}"#,
    ];
    let got = strip(helm.template("elsewhere", &args)?)?;
    ensure!(
        !serde_json::to_string(&got)?.contains(BASE_NAMESPACE),
        "an object rendered into the namespace `elsewhere` still names {BASE_NAMESPACE}"
    );
    same_objects("every templated value set", want, got)?;

    // Values that cannot work together are refused, with a message that says why.
    let out = helm
        .command(
            None,
            &[
                "template",
                "s2z",
                CHART,
                "--set",
                "tls.certManager.enabled=true,tls.caBundle=Q0E=",
            ],
        )
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("cert-manager provides the certificate"),
        "certManager with a caBundle was not refused: {stderr}"
    );
    let out = helm
        .command(None, &["template", "s2z", CHART, "--set", "tls.cert=x"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("tls.cert and tls.key go together"),
        "tls.cert without tls.key was not refused: {stderr}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Install, upgrade and uninstall on a private plane.
// ---------------------------------------------------------------------------------------------

/// Stops the local control plane under its directory when dropped. The test runs a plane of its
/// own because the chart installs cluster-wide objects (the Org CRD, ClusterRoles, the
/// MutatingWebhookConfiguration s2z-webhook) that the tests sharing `.state/cluster` create and
/// rely on, and its uninstall deletes them.
struct PlaneGuard(PathBuf);

impl Drop for PlaneGuard {
    fn drop(&mut self) {
        down(&self.0);
    }
}

/// Starts a plane under `.state/<name>` with 2 fake nodes (one per webhook replica).
fn private_plane(name: &str) -> Result<(PlaneGuard, Plane)> {
    let dir = repo_root().join(".state").join(name);
    // A plane left running by an interrupted run would still hold its release: start clean.
    down(&dir);
    let bin = repo_root().join("tests/cluster/bin/s2z-cluster");
    ensure!(
        bin.exists(),
        "{} is not built: run `make build`",
        bin.display()
    );
    let guard = PlaneGuard(dir.clone());
    let args = ["up", "--nodes", "2", "--state-dir"];
    let out = Command::new(&bin)
        .args(args)
        .arg(&dir)
        .output()
        .with_context(|| format!("failed to run {}", bin.display()))?;
    checked("s2z-cluster", &args, out)?;
    let raw = std::fs::read(dir.join("cluster.json")).context("failed to read cluster.json")?;
    let plane = serde_json::from_slice(&raw).context("failed to parse cluster.json")?;
    Ok((guard, plane))
}

fn down(dir: &Path) {
    let _ = Command::new(repo_root().join("tests/cluster/bin/s2z-cluster"))
        .args(["down", "--state-dir"])
        .arg(dir)
        .output();
}

/// Live objects, by the apiVersion, kind, namespace and name of rendered ones.
async fn live(client: &kube::Client, rendered: &Value) -> Result<Option<Value>> {
    let (group, version) = match rendered["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .split_once('/')
    {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            rendered["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
    };
    let kind = rendered["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API serves no {kind}"))?;
    let name = rendered["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match (caps.scope, rendered["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        (Scope::Namespaced, None) => bail!("{kind} {name} is rendered without a namespace"),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    Ok(api
        .get_opt(name)
        .await?
        .map(serde_json::to_value)
        .transpose()?)
}

/// Every path where the live object lacks a rendered field or holds another value (fields the
/// API server adds, defaults and status, are not differences).
fn missing_from(path: &str, rendered: &Value, live: &Value, out: &mut Vec<String>) {
    match (rendered, live) {
        (Value::Object(r), Value::Object(l)) => {
            for (k, v) in r {
                match l.get(k) {
                    Some(lv) => missing_from(&format!("{path}.{k}"), v, lv, out),
                    None => out.push(format!("{path}.{k} missing")),
                }
            }
        }
        (Value::Array(r), Value::Array(l)) if r.len() == l.len() => {
            for (i, (u, v)) in r.iter().zip(l).enumerate() {
                missing_from(&format!("{path}[{i}]"), u, v, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if rendered == live => {}
        _ => out.push(format!("{path}: rendered {rendered}, live {live}")),
    }
}

/// The release's manifest as the API reads it: kubectl parses the YAML (`defaultMode: 0440` is
/// octal to it, as to the API server) without sending anything.
fn release_objects(helm: &Helm, plane: &Plane, revision: Option<&str>) -> Result<Vec<Value>> {
    let mut args = vec!["get", "manifest", "s2z", "--namespace", BASE_NAMESPACE];
    if let Some(r) = revision {
        args.extend(["--revision", r]);
    }
    let manifest = helm.run(Some(&plane.admin_kubeconfig), &args)?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest)?;
    let path = file.path().to_string_lossy().into_owned();
    let args = [
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        path.as_str(),
    ];
    let out = Command::new(plane.bin_dir.join("kubectl"))
        .args(args)
        .env("KUBECONFIG", &plane.admin_kubeconfig)
        .output()
        .context("failed to run kubectl")?;
    // One JSON document per object, one after the other.
    serde_json::Deserializer::from_str(&checked("kubectl", &args, out)?)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .context("kubectl printed something other than JSON objects")
}

async fn assert_installed_as_rendered(client: &kube::Client, rendered: &[Value]) -> Result<()> {
    let mut problems = Vec::new();
    for obj in rendered {
        let key = object_key(obj);
        match live(client, obj).await? {
            Some(l) => missing_from(&key, obj, &l, &mut problems),
            None => problems.push(format!("{key} does not exist")),
        }
    }
    ensure!(
        problems.is_empty(),
        "the live objects differ from what Helm rendered:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

fn deployment_image(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart() -> Result<()> {
    let start = Instant::now();
    let helm = Helm::new()?;
    let (_guard, plane) = private_plane("helm")?;
    let plane = &plane;
    let kubeconfig = Some(plane.admin_kubeconfig.as_path());
    let client = client_for(&plane.admin_kubeconfig).await?;
    eprintln!("plane up in {:.1?}", start.elapsed());

    // Install with a self-signed certificate for the Service, as a user without cert-manager.
    // No --wait: whether pods come up is KWOK's business, checked below through the API.
    let certs = tempfile::tempdir()?;
    let (crt, key, pem) = write_serving_cert(certs.path(), BASE_NAMESPACE)?;
    let (crt, key) = (
        format!("tls.cert={}", crt.display()),
        format!("tls.key={}", key.display()),
    );
    let t = Instant::now();
    helm.run(
        kubeconfig,
        &[
            "install",
            "s2z",
            CHART,
            "--namespace",
            BASE_NAMESPACE,
            "--create-namespace",
            "--set-file",
            &crt,
            "--set-file",
            &key,
        ],
    )?;
    eprintln!("helm install in {:.1?}", t.elapsed());

    let rendered = release_objects(&helm, plane, None)?;
    let kinds: BTreeSet<String> = rendered.iter().map(object_key).collect();
    for want in [
        "apiextensions.k8s.io/v1 CustomResourceDefinition /orgs.s2z.dev",
        "apps/v1 Deployment s2z-system/s2z-webhook",
        "v1 ServiceAccount s2z-system/s2z-webhook",
        "rbac.authorization.k8s.io/v1 ClusterRole /s2z-webhook",
        "rbac.authorization.k8s.io/v1 ClusterRoleBinding /s2z-webhook",
        "rbac.authorization.k8s.io/v1 Role s2z-system/s2z-webhook",
        "rbac.authorization.k8s.io/v1 RoleBinding knative-serving/s2z-webhook-knative-config",
        "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration /s2z-webhook",
        "policy/v1 PodDisruptionBudget s2z-system/s2z-webhook",
        "v1 ConfigMap s2z-system/s2z-settings",
        "v1 Secret s2z-system/s2z-webhook-tls",
        "v1 Service s2z-system/s2z-webhook",
    ] {
        ensure!(
            kinds.contains(want),
            "the release does not hold {want}: {kinds:?}"
        );
    }
    assert_installed_as_rendered(&client, &rendered).await?;
    let mwc = rendered
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .context("no MutatingWebhookConfiguration")?;
    let ca = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default();
    use base64::Engine;
    ensure!(
        base64::engine::general_purpose::STANDARD.decode(ca)? == pem.as_bytes(),
        "the webhook configuration does not trust the given certificate"
    );

    // The CRD works: an Org can be created, and it survives the uninstall below.
    let orgs: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "s2z.dev", "v1alpha1", "Org",
        )),
    );
    let org: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "s2z.dev/v1alpha1", "kind": "Org",
        "metadata": {"name": "helm-chart-test"}, "spec": {"scaleToZeroAllowed": true},
    }))?;
    eventually(
        "the Org CRD to be served",
        Duration::from_secs(20),
        || async {
            match orgs.create(&PostParams::default(), &org).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some(())),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;

    // KWOK runs the pods: both replicas become available although the image is never pulled.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), BASE_NAMESPACE);
    let available = |want: i32| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("s2z-webhook").await?;
                let s = d.status.unwrap_or_default();
                let done = s.updated_replicas == Some(want)
                    && s.available_replicas == Some(want)
                    && s.replicas == Some(want);
                Ok(done.then_some(()))
            }
        }
    };
    eventually(
        "2 available webhook replicas",
        Duration::from_secs(30),
        available(2),
    )
    .await?;

    // An operator changes a setting (as `kubectl s2z settings set` does): upgrades keep it.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), BASE_NAMESPACE);
    configmaps
        .patch(
            "s2z-settings",
            &PatchParams {
                field_manager: Some("kubectl-s2z".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"orgDormancyPeriodSecs": "7200"}})),
        )
        .await
        .context("failed to change a setting")?;

    // Upgrade with other values: the Deployment follows, and rolls out.
    let before = deployments.get("s2z-webhook").await?;
    let t = Instant::now();
    helm.run(
        kubeconfig,
        &[
            "upgrade",
            "s2z",
            CHART,
            "--namespace",
            BASE_NAMESPACE,
            "--reuse-values",
            "--set",
            "replicas=3,image.tag=0.1.0-upgraded",
        ],
    )?;
    eprintln!("helm upgrade in {:.1?}", t.elapsed());
    let after = deployments.get("s2z-webhook").await?;
    ensure!(
        after.spec.as_ref().and_then(|s| s.replicas) == Some(3),
        "the upgrade did not set 3 replicas: {:?}",
        after.spec.as_ref().map(|s| s.replicas)
    );
    let image = deployment_image(&after);
    ensure!(
        image.as_deref() == Some("ghcr.io/s2z-dev/s2z-webhook:0.1.0-upgraded"),
        "the upgrade did not change the image: {image:?}"
    );
    ensure!(
        after.metadata.generation > before.metadata.generation,
        "the Deployment's generation did not move"
    );
    assert_installed_as_rendered(&client, &release_objects(&helm, plane, Some("2"))?).await?;
    eventually(
        "3 upgraded webhook replicas",
        Duration::from_secs(30),
        available(3),
    )
    .await?;
    let settings = configmaps.get("s2z-settings").await?;
    let period = settings
        .data
        .unwrap_or_default()
        .remove("orgDormancyPeriodSecs");
    ensure!(
        period.as_deref() == Some("7200"),
        "the upgrade reset the operator's setting: orgDormancyPeriodSecs = {period:?}"
    );

    // Uninstall removes everything but the CRD (crds.keep) and, with it, the Orgs.
    let t = Instant::now();
    helm.run(
        kubeconfig,
        &["uninstall", "s2z", "--namespace", BASE_NAMESPACE],
    )?;
    eprintln!("helm uninstall in {:.1?}", t.elapsed());
    let client = &client;
    let rendered = &rendered;
    eventually(
        "the release's objects to be gone",
        Duration::from_secs(20),
        || async move {
            let mut left = Vec::new();
            for obj in rendered
                .iter()
                .filter(|o| o["kind"] != "CustomResourceDefinition")
            {
                if live(client, obj).await?.is_some() {
                    left.push(object_key(obj));
                }
            }
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    ensure!(
        orgs.get_opt("helm-chart-test").await?.is_some(),
        "the Org is gone after helm uninstall: the CRD was not kept"
    );
    let out = helm.run(kubeconfig, &["list", "--all-namespaces", "-q"])?;
    ensure!(out.trim().is_empty(), "helm still lists a release: {out}");

    // A second install adopts the kept CRD (it still carries the release's annotations).
    let install = ["install", "s2z", CHART, "--namespace", BASE_NAMESPACE];
    helm.run(kubeconfig, &install)
        .context("reinstalling over the kept CRD failed")?;
    assert_installed_as_rendered(client, &release_objects(&helm, plane, None)?).await?;
    eprintln!(
        "install, upgrade, uninstall checked in {:.1?}",
        start.elapsed()
    );
    Ok(())
}
