"""C2PA Content Credentials: every exported image carries a signed manifest saying that livegen made it.

The manifest holds a `c2pa.actions` assertion (`c2pa.created`, digital source type
trainedAlgorithmicMedia) and an `org.livegen.generation` assertion with the generation settings
and the prompt's SHA-256 (never the prompt). c2pa-python embeds and reads it in JPEG, PNG and WebP
(and the other formats `c2pa.Builder.get_supported_mime_types()` lists).

Signing needs a certificate chain and its private key. `init_keys` makes a development chain: a
root CA and a signing certificate it issues. Nothing here touches the network: no timestamp
authority, no OCSP, no remote manifests, and c2pa's HTTP resolver is given an empty host list.

Trust: `read_manifest(..., root=path)` trusts exactly that root (it replaces c2pa's own anchors);
without a root nothing livegen signs is trusted, but the signature and the hard binding are still
checked, so `valid` and `trusted` answer different questions.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from livegen import __version__
from livegen.protocol import Frame, Generate

log = logging.getLogger(__name__)

GENERATION_LABEL = "org.livegen.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # an EKU c2pa accepts for claim signers

# Offline by construction: an empty allowed-host list makes c2pa's HTTP resolver refuse every request.
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
           "core": {"allowed_network_hosts": []}}
SIGNING_SETTINGS = {**OFFLINE, "builder": {"thumbnail": {"enabled": False},  # the image is its own thumbnail
                                           "claim_generator_info": {"name": "livegen", "version": __version__}}}


class ProvenanceError(Exception):
    """Keys that cannot be read or used, or an image c2pa cannot sign or read; the message says which."""


@dataclass(frozen=True)
class SigningKeys:
    cert_chain: Path  # PEM: the signing certificate, then its intermediates; not the root
    private_key: Path  # PEM
    root: Path | None = None  # the trust anchor `read_manifest` is given to trust these keys' manifests
    algorithm: str = "es256"

    @classmethod
    def in_directory(cls, directory: Path) -> SigningKeys:
        """The files `init_keys` writes; a deployment puts its own chain and key under the same names."""
        root = Path(directory) / "root.pem"
        return cls(Path(directory) / "signing-chain.pem", Path(directory) / "signing-key.pem", root)


@dataclass
class ManifestReport:
    present: bool
    valid: bool = False  # the claim signature and the hard binding (data hash) validate
    trusted: bool = False  # the signing chain ends at a trusted root
    errors: list[str] = field(default_factory=list)  # c2pa failure codes, "code: explanation"
    signer: str | None = None  # common name of the signing certificate
    issuer: str | None = None  # organization of the signing certificate's issuer
    claim_generator: str | None = None  # e.g. "livegen 0.1.0"
    actions: list[dict] = field(default_factory=list)
    generation: dict | None = None  # the org.livegen.generation assertion
    validation_state: str | None = None  # c2pa's summary: Invalid, Valid or Trusted


def init_keys(directory: Path, common_name: str = "livegen development") -> SigningKeys:
    """Write a development root CA and an ECDSA P-256 signing certificate it issued, as PEM files.

    c2pa refuses self-signed signing certificates, so the signer is issued by a separate root; c2pa
    needs no intermediate. The root's private key is not kept: the root can issue nothing else.
    Refuses to overwrite: raises FileExistsError if any of the files exists.
    """
    directory = Path(directory)
    keys = SigningKeys.in_directory(directory)
    existing = [str(path) for path in (keys.cert_chain, keys.private_key, keys.root) if path.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing key files: {', '.join(existing)}")

    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{common_name} root")
    root = (_certificate(root_name, root_name, root_key.public_key(), root_key, now, days=3650)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(root_key, hashes.SHA256()))
    signing = (_certificate(_name(common_name), root_name, signing_key.public_key(), root_key, now, days=730)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(digital_signature=True), critical=True)
               .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                              critical=False)
               .sign(root_key, hashes.SHA256()))

    directory.mkdir(parents=True, exist_ok=True)
    key_pem = signing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    # O_EXCL refuses an existing file even if one appeared since the check; the mode is set at creation.
    with os.fdopen(os.open(keys.private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(key_pem)
    with open(keys.cert_chain, "xb") as file:
        file.write(signing.public_bytes(serialization.Encoding.PEM))
    with open(keys.root, "xb") as file:
        file.write(root.public_bytes(serialization.Encoding.PEM))
    return keys


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "livegen")])


def _certificate(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 issuer_key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False))


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                         crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ProvenanceError(f"cannot read the {what} {path}: {exc.strerror or exc} "
                              "(init_keys makes a development chain)") from exc


def generation_record(frame: Frame, request: Generate, guidance: float) -> dict:
    """What made the frame, for its Content Credentials: settings and a hash of the prompt,
    never the prompt itself."""
    return {"model": frame.model, "steps": request.steps, "seed": frame.seed, "guidance": guidance,
            "size": f"{frame.width}x{frame.height}", "image_to_image": request.image is not None,
            "prompt_sha256": hashlib.sha256(request.prompt.encode()).hexdigest()}


def load_provenance(directory: Path) -> Provenance:
    """The signing keys for Content Credentials; a development chain if none are there yet."""
    keys = SigningKeys.in_directory(directory)
    if not keys.cert_chain.exists() and not keys.private_key.exists():
        try:
            init_keys(directory)
        except OSError as exc:
            raise ProvenanceError(f"cannot make a development signing chain in {directory} ({exc}): set "
                                  "LIVEGEN_SAFETY__KEYS (--keys) to a writable folder, or put a chain there") from exc
        log.warning("made a development signing chain in %s: exports are signed, but trusted only where "
                    "its root.pem is; put a real chain and key there for production", directory)
    return Provenance(keys)


class Provenance:
    """Signs images with one key; the keys are read and checked once, here. Signing runs on worker
    threads, one at a time: the signer is shared and c2pa does not promise it is thread-safe."""

    def __init__(self, keys: SigningKeys):
        chain_pem = _read(keys.cert_chain, "certificate chain")
        key_pem = _read(keys.private_key, "private key")
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise ProvenanceError(f"{keys.cert_chain} is not a PEM certificate chain: {exc}") from exc
        try:
            private_key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ProvenanceError(f"{keys.private_key} is not an unencrypted PEM private key: {exc}") from exc
        if private_key.public_key() != chain[0].public_key():
            raise ProvenanceError(f"the private key {keys.private_key} does not belong to the first certificate "
                                  f"in {keys.cert_chain}")
        try:
            info = c2pa.C2paSignerInfo(keys.algorithm.lower(), chain_pem, key_pem, None)  # None: no timestamp authority
            self._signer = c2pa.Signer.from_info(info)
            self._context = c2pa.Context.from_dict(SIGNING_SETTINGS)
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"c2pa rejected the signing keys {keys.cert_chain}, {keys.private_key} "
                                  f"(algorithm {keys.algorithm}): {exc}") from exc
        self.keys = keys
        self._signing = threading.Lock()

    def sign(self, media: bytes, mime_type: str, generation: dict) -> bytes:
        """Return the image (or WAV audio) with an embedded, signed C2PA manifest.

        `generation` is a flat dict of strings, numbers, booleans and None (model, steps, seed, guidance,
        size such as "512x512", prompt_sha256; for speech the model, sample rate, seconds): c2pa stores a list of numbers as a byte string, which
        would not read back as written, so lists are refused.
        """
        for key, value in generation.items():
            if not isinstance(value, str | int | float | bool | None):
                raise ValueError(f"generation[{key!r}] is a {type(value).__name__}; use a string, number, "
                                 "boolean or None (e.g. size '512x512')")
        manifest = {
            "claim_generator_info": [{"name": "livegen", "version": __version__}],
            "assertions": [
                {"label": "c2pa.actions",
                 "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                       "softwareAgent": {"name": "livegen", "version": __version__}}]}},
                {"label": GENERATION_LABEL, "data": generation},
            ],
        }
        signed = io.BytesIO()
        try:
            with self._signing:
                builder = c2pa.Builder(manifest, context=self._context)
                builder.sign(self._signer, mime_type, io.BytesIO(media), signed)
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"cannot sign this {mime_type} file: {exc}") from exc
        return signed.getvalue()


def read_manifest(image: bytes, mime_type: str, root: Path | None = None) -> ManifestReport:
    """Read and validate the image's active C2PA manifest; `root` is the one trust anchor to trust.

    An image without a manifest gives `present=False`; a manifest that fails validation gives
    `valid=False` and its failure codes (e.g. `assertion.dataHash.mismatch` for changed pixels).
    """
    settings: dict = dict(OFFLINE)
    if root is not None:
        settings["trust"] = {"trust_anchors": _read(root, "trust anchor").decode("ascii", "replace")}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime_type, io.BytesIO(image), context=context)
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"cannot read C2PA data from this {mime_type} image: {exc}") from exc
    if reader is None:
        return ManifestReport(present=False)
    with reader:
        manifest = reader.get_active_manifest() or {}
        state = reader.get_validation_state()
        results = (reader.get_validation_results() or {}).get("activeManifest") or {}
    assertions = manifest.get("assertions", [])
    signature = manifest.get("signature_info") or {}
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    return ManifestReport(
        present=True,
        valid=state in ("Valid", "Trusted"),
        # From the success codes, not the state: a tampered image still names a trusted signer.
        trusted=any(status["code"] == "signingCredential.trusted" for status in results.get("success", [])),
        errors=[f"{status['code']}: {status.get('explanation', '')}" for status in results.get("failure", [])],
        signer=signature.get("common_name"),
        issuer=signature.get("issuer"),
        claim_generator=" ".join(filter(None, (generator.get("name"), generator.get("version")))) or None,
        actions=[action for a in assertions if a["label"].startswith("c2pa.actions")
                 for action in a["data"].get("actions", [])],
        generation=next((a["data"] for a in assertions if a["label"] == GENERATION_LABEL), None),
        validation_state=state,
    )
