"""Offline validation of rendered manifests.

Every object is checked against a schema, and an object with no schema is an error (it could not
be checked, so it must not be applied blind):

- custom resources against the upstream CustomResourceDefinitions kept in
  ``../shared/schemas/crds`` (``openAPIV3Schema`` of the served version);
- ``BuildConfig`` and ``ImageStream`` against the OpenShift OpenAPI excerpt kept there too;
- core Kubernetes kinds against the schemas shipped with ``kubernetes-validate``;
- the few kinds the shared folder does not carry (``DataScienceCluster``, the image registry
  ``Config``, KubeVirt ``VirtualMachine``, ``HyperConverged``) against the schemas in
  ``infra/schemas``, written from their upstream API references.

Validation is strict, as ``kubectl apply --validate=strict`` is: a field the schema does not
declare is an error (the API server would otherwise drop it silently), except under
``x-kubernetes-preserve-unknown-fields``. Knative ``Trigger.spec`` is declared open upstream, so
its fields are checked here against the ones Knative documents.

A second check, :func:`find_literal_credentials`, refuses any Secret with data in the manifests,
any credential-like environment variable with a literal value, and the well-known demo defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from infra.render import object_ref
from vinspect.errors import VinspectError

SHARED_DIR_ENV = "VINSPECT_SHARED_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
OPENSHIFT_EXCERPT = "openshift_openapi_excerpt_buildconfig_imagestream_route.json"
# OpenShift 4.18 runs Kubernetes 1.31: validate core kinds against what that API server serves.
KUBERNETES_VERSION = "1.31.0"

# Kinds served by OpenShift itself whose definitions live in the OpenShift OpenAPI excerpt.
_OPENSHIFT_DEFINITIONS = {
    ("build.openshift.io/v1", "BuildConfig"): "com.github.openshift.api.build.v1.BuildConfig",
    ("image.openshift.io/v1", "ImageStream"): "com.github.openshift.api.image.v1.ImageStream",
}

# Schemas that upstream leaves open (x-kubernetes-preserve-unknown-fields) although the fields
# are documented: the paths listed here are closed to the declared properties.
_CLOSE_OPEN_PATHS: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("eventing.knative.dev", "Trigger"): [("spec",)],
    ("operator.knative.dev", "KnativeServing"): [("spec",)],
    ("operator.knative.dev", "KnativeEventing"): [("spec",)],
}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SchemasMissingError(VinspectError, FileNotFoundError):
    """The shared CRD schemas folder is not where it should be."""


@dataclass(frozen=True)
class Issue:
    """One validation problem: which object, which field, what is wrong."""

    obj: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.obj}{where}: {self.message}"


def shared_dir() -> Path:
    """The shared folder: ``$VINSPECT_SHARED_DIR`` or ``<repo>/../shared``."""
    env = os.environ.get(SHARED_DIR_ENV)
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared").resolve()


def crd_schemas_dir() -> Path:
    """Folder of the shared upstream CRDs, checked to exist.

    Raises:
        SchemasMissingError: The folder is absent; the message says how to point at it.
    """
    path = shared_dir() / "schemas" / "crds"
    if not path.is_dir():
        raise SchemasMissingError(
            f"CRD schemas folder not found: {path}. Put the shared folder next to the repository "
            f"(../shared/schemas/crds) or set {SHARED_DIR_ENV} to the folder that holds schemas/crds."
        )
    return path


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _close_objects(schema: Any) -> Any:
    """Make a structural schema strict: objects accept only their declared properties.

    Also maps OpenAPI ``nullable`` to JSON Schema and lets embedded resources carry
    ``apiVersion``/``kind``/``metadata`` as Kubernetes does.
    """
    if isinstance(schema, list):
        return [_close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # Some upstream CRDs carry `anyOf: null` (an empty template expansion): drop it.
    out = {
        key: _close_objects(value)
        for key, value in schema.items()
        if not (key in ("anyOf", "allOf", "oneOf") and value is None)
    }
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _apply_defaults(schema: Any, value: Any) -> Any:
    """Fill in schema defaults the way the API server does before it validates a custom resource.

    Some upstream schemas only pass once defaults are in (Route's ``spec`` rules read
    ``wildcardPolicy``, which defaults to ``None``).
    """
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and isinstance(sub, dict) and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    value[key] = _apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_apply_defaults(schema["items"], item) for item in value]
    return value


def _close_path(schema: dict[str, Any], path: tuple[str, ...]) -> None:
    node = schema
    for part in path:
        node = node["properties"][part]
    node.pop("x-kubernetes-preserve-unknown-fields", None)
    node["additionalProperties"] = False


def _metadata_issues(obj: dict[str, Any], ref: str) -> list[Issue]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [Issue(ref, "metadata", "must be a mapping")]
    issues = []
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        issues.append(Issue(ref, "metadata.name", f"{name!r} is not a valid DNS subdomain name"))
    namespace = meta.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _DNS_SUBDOMAIN.match(namespace)):
        issues.append(Issue(ref, "metadata.namespace", f"{namespace!r} is not a valid namespace name"))
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                issues.append(Issue(ref, f"metadata.{field}.{key}", f"value {value!r} must be a string"))
    return issues


class SchemaStore:
    """Finds and caches a JSON Schema validator for each ``(apiVersion, kind)``.

    Args:
        crd_dir: Folder of upstream CRD YAML files (with ``openAPIV3Schema``) and the OpenShift
            OpenAPI excerpt.
        extra_dirs: More CRD-format schema files (the kinds the shared folder lacks).
        kubernetes_version: Kubernetes version whose core schemas are used.
    """

    def __init__(
        self,
        crd_dir: Path,
        extra_dirs: Iterable[Path] = (LOCAL_SCHEMAS_DIR,),
        kubernetes_version: str = KUBERNETES_VERSION,
    ) -> None:
        if not crd_dir.is_dir():
            raise SchemasMissingError(f"CRD schemas folder not found: {crd_dir}")
        self.crd_dir = crd_dir
        self.kubernetes_version = kubernetes_version
        # (apiVersion, kind) -> (source file, openAPIV3Schema)
        self._crd_schemas: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._validators: dict[tuple[str, str], Callable[[dict[str, Any]], list[tuple[str, str]]]] = {}
        self._openshift: dict[str, Any] | None = None
        # Schema files ignored because an earlier folder already had their kind and version.
        self.shadowed: list[str] = []
        for directory in (crd_dir, *extra_dirs):
            for path in sorted(Path(directory).glob("*.yaml")):
                self._load_crd(path)

    def _load_crd(self, path: Path) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with path.open() as fh:
            doc = yaml.load(fh, Loader=loader)
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            return
        spec = doc["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        for version in spec.get("versions", []):
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or (spec.get("validation") or {}).get(
                "openAPIV3Schema"
            )
            if version.get("served", True) and schema:
                # The shared upstream CRDs are loaded first and win over the local subsets.
                key = (f"{group}/{version['name']}", kind)
                if key in self._crd_schemas:
                    self.shadowed.append(f"{path} ({kind} {key[0]}, already in {self._crd_schemas[key][0]})")
                    continue
                self._crd_schemas[key] = (path.name, schema)

    def known(self) -> list[tuple[str, str]]:
        """The custom ``(apiVersion, kind)`` pairs the store has schemas for."""
        return sorted(self._crd_schemas) + sorted(_OPENSHIFT_DEFINITIONS)

    def _crd_validator(self, key: tuple[str, str]) -> Callable[[dict[str, Any]], list[tuple[str, str]]]:
        import jsonschema

        _, schema = self._crd_schemas[key]
        strict = _close_objects(copy.deepcopy(schema))
        group = key[0].split("/")[0]
        for path in _CLOSE_OPEN_PATHS.get((group, key[1]), []):
            _close_path(strict, path)
        # Every object carries apiVersion/kind/metadata whether its schema says so or not;
        # metadata is checked by _metadata_issues (CRD schemas only say "type: object").
        props = strict.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"type": "object"}
        validator = jsonschema.Draft7Validator(strict)

        def check(obj: dict[str, Any]) -> list[tuple[str, str]]:
            defaulted = _apply_defaults(strict, copy.deepcopy(obj))
            return [(_json_path(e.absolute_path), e.message) for e in validator.iter_errors(defaulted)]

        return check

    def _openshift_validator(self, definition: str) -> Callable[[dict[str, Any]], list[tuple[str, str]]]:
        import jsonschema

        if self._openshift is None:
            path = self.crd_dir / OPENSHIFT_EXCERPT
            if not path.is_file():
                raise SchemasMissingError(f"OpenShift OpenAPI excerpt not found: {path}")
            self._openshift = _close_objects(json.loads(path.read_text())["definitions"])
        root = {"$ref": f"#/definitions/{definition}", "definitions": self._openshift}
        validator = jsonschema.Draft4Validator(root)
        return lambda obj: [(_json_path(e.absolute_path), e.message) for e in validator.iter_errors(obj)]

    def _core_validator(self, api_version: str, kind: str) -> Callable[[dict[str, Any]], list[tuple[str, str]]] | None:
        import jsonschema
        import referencing
        from kubernetes_validate import utils as kv

        # Same file naming as kubernetes_validate.validate(), with the validator cached.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(self.kubernetes_version)][-1]
        schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
        try:
            schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
        except FileNotFoundError:
            return None
        definitions = _definitions(schema_dir, version)
        registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        return lambda obj: [(_json_path(e.absolute_path), e.message) for e in validator.iter_errors(obj)]

    def validator(self, api_version: str, kind: str) -> Callable[[dict[str, Any]], list[tuple[str, str]]] | None:
        """A function returning ``[(field path, message)]`` for an object, or ``None`` if unknown."""
        key = (api_version, kind)
        if key not in self._validators:
            if key in self._crd_schemas:
                found = self._crd_validator(key)
            elif key in _OPENSHIFT_DEFINITIONS:
                found = self._openshift_validator(_OPENSHIFT_DEFINITIONS[key])
            else:
                found = self._core_validator(api_version, kind)
            if found is None:
                return None
            self._validators[key] = found
        return self._validators[key]

    def validate_object(self, obj: dict[str, Any]) -> list[Issue]:
        """Validate one object; an unknown ``(apiVersion, kind)`` is an issue, never a pass."""
        ref = object_ref(obj)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [Issue(ref, "", "apiVersion and kind must be strings")]
        check = self.validator(api_version, kind)
        if check is None:
            return [
                Issue(
                    ref,
                    "",
                    f"no schema for {kind} {api_version}: not in {self.crd_dir}, infra/schemas or the core "
                    f"Kubernetes {self.kubernetes_version} schemas, so it cannot be validated",
                )
            ]
        issues = _metadata_issues(obj, ref)
        issues += [Issue(ref, path, message) for path, message in check(obj) if not path.startswith("metadata")]
        return issues


@lru_cache(maxsize=4)
def _definitions(schema_dir: str, version: str) -> dict[str, Any]:
    from kubernetes_validate import utils as kv

    return kv.schema_contents(f"{schema_dir}/_definitions.json", version)


@lru_cache(maxsize=4)
def _store_for(crd_dir: str) -> SchemaStore:
    return SchemaStore(Path(crd_dir))


def default_store() -> SchemaStore:
    """The schema store for the shared CRD folder (cached per folder).

    Raises:
        SchemasMissingError: The shared schemas folder is missing.
    """
    return _store_for(str(crd_schemas_dir()))


def validate_objects(objects: Iterable[dict[str, Any]], store: SchemaStore | None = None) -> list[Issue]:
    """Validate objects against their schemas and check for literal credentials.

    Args:
        objects: Rendered Kubernetes objects.
        store: Schema store; the shared one by default.

    Returns:
        Every issue found, in object order (empty when all is well).
    """
    store = store or default_store()
    objects = list(objects)
    issues: list[Issue] = []
    seen: dict[tuple[str, str, str | None, str], str] = {}
    for obj in objects:
        issues += store.validate_object(obj)
        meta = obj.get("metadata") or {}
        key = (
            str(obj.get("apiVersion")).split("/")[0],
            str(obj.get("kind")),
            meta.get("namespace"),
            str(meta.get("name")),
        )
        if key in seen:
            issues.append(Issue(object_ref(obj), "metadata.name", "defined twice in the rendered output"))
        seen[key] = object_ref(obj)
    issues += find_literal_credentials(objects)
    return issues


# Environment variable names that carry credentials; their value must come from a Secret.
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.IGNORECASE)
# Defaults that demo repositories ship (Minio's root password and user, and two generic ones);
# any occurrence in a rendered manifest is refused. Kept as sha256 digests so the repository
# itself carries no credential-looking literal.
_KNOWN_DEFAULT_DIGESTS = frozenset(
    {
        "179c076ac522159dbbd50d4f1d84faf05551fe5b59d7e5824a800d46559fb1d1",
        "ad9858116e63b0c5a4d7dc7f50f034c7247e56838dae22c1832712ffde48e694",
        "057ba03d6c44104863dc7361fe4578965d1887360f90a0895882e58a6248fc86",
        "ef92b778bafe771e89245b89ecbc08a44a4e166c06659911881f383d4473e94f",
    }
)
_TOKEN = re.compile(r"[a-z0-9_]{6,}")


def is_known_default(value: str) -> bool:
    """Whether ``value`` is one of the well-known demo default credentials (case-insensitive)."""
    return hashlib.sha256(value.lower().encode()).hexdigest() in _KNOWN_DEFAULT_DIGESTS


def _walk_env(node: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        yield (*path, "env", index), item
            else:
                yield from _walk_env(value, (*path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk_env(item, (*path, index))


def find_literal_credentials(objects: Iterable[dict[str, Any]]) -> list[Issue]:
    """Find credentials written into manifests.

    Refused: a ``Secret`` carrying any ``data``/``stringData`` (credentials are generated by the
    bootstrap, never committed), an environment variable whose name says credential with a literal
    ``value`` (it must use ``valueFrom.secretKeyRef``), a ``ConfigMap`` key whose name says
    credential (a ConfigMap such as ``vinspect-runtime`` is mapped into pods as plain environment,
    so it holds endpoints only), and the usual demo defaults anywhere.
    """
    issues = []
    for obj in objects:
        ref = object_ref(obj)
        if obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1":
            for field in ("data", "stringData"):
                if obj.get(field):
                    keys = ", ".join(sorted(obj[field]))
                    issues.append(
                        Issue(
                            ref,
                            field,
                            f"Secret carries literal values ({keys}); secrets are generated by "
                            "`vinspect infra bootstrap`, never written into manifests",
                        )
                    )
        if obj.get("kind") == "ConfigMap" and obj.get("apiVersion") == "v1":
            for key in sorted(obj.get("data") or {}):
                if _SECRET_ENV.search(key):
                    issues.append(
                        Issue(
                            ref,
                            f"data.{key}",
                            f"ConfigMap key {key} names a credential; put it in a "
                            "generated Secret and map it with secretKeyRef",
                        )
                    )
        for path, env in _walk_env(obj):
            name = str(env.get("name", ""))
            if _SECRET_ENV.search(name) and env.get("value") not in (None, ""):
                issues.append(
                    Issue(
                        ref,
                        f"{_json_path(path)}.value",
                        f"environment variable {name} has a literal value; "
                        "take it from a Secret with valueFrom.secretKeyRef",
                    )
                )
        for token in sorted(set(_TOKEN.findall(json.dumps(obj).lower()))):
            if is_known_default(token):
                issues.append(Issue(ref, "", f"contains the well-known default credential {token!r}"))
    return issues
