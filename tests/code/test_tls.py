"""TLS inside the Python guest (docs/code-sandboxes.md, "TLS"): _ssl and _hashlib built in from
Debian's OpenSSL, the CA bundle of Debian's ca-certificates in the image, a real TLS 1.3
handshake between two SSLObjects in the guest with a CA the test makes on the host, and OpenSSL's
random generator reseeded in every sandbox restored from a snapshot."""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import CodeSandbox


def _make_ca_and_server(d: Path, cn: str) -> dict[str, bytes]:
    """A CA (`cn`) and a server certificate for `localhost` it signs: ca.pem, server.pem and
    server.key, made with the `cryptography` package, or the openssl CLI without it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return _make_with_cli(d, cn)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"ca.pem": ca.public_bytes(pem), "server.pem": server.public_bytes(pem),
            "server.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())}


def _make_with_cli(d: Path, cn: str) -> dict[str, bytes]:
    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={cn}")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=DNS:localhost\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext")
    return {n: (d / n).read_bytes() for n in ("ca.pem", "server.pem", "server.key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The test's CA and server certificate, plus `other-ca.pem`: a CA that signed nothing."""
    files = _make_ca_and_server(tmp_path_factory.mktemp("pki"), "snapcell test CA")
    other = _make_ca_and_server(tmp_path_factory.mktemp("other"), "snapcell other CA")
    return {**files, "other-ca.pem": other["ca.pem"]}


@pytest.fixture
def py() -> Iterator[CodeSandbox]:
    with CodeSandbox("python", timeout=10.0) as b:
        yield b


# A client and a server SSLObject joined by memory BIOs: handshake, then one message each way.
HANDSHAKE = """
import ssl
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain('server.pem', 'server.key')
client_ctx = ssl.create_default_context(cafile=CAFILE)
client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
client = client_ctx.wrap_bio(c_in, c_out, server_hostname='localhost')
server = server_ctx.wrap_bio(s_in, s_out, server_side=True)

def pump():
    for src, dst in ((c_out, s_in), (s_out, c_in)):
        data = src.read()
        if data:
            dst.write(data)

def step(side):
    try:
        side.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False

for _ in range(8):
    done = step(client), step(server)
    pump()
    if all(done):
        break
client.write(b'ping over tls')
pump()
got = server.read()
server.write(got.upper())
pump()
[client.version(), client.cipher()[0], got, client.read(), dict(x[0] for x in
 client.getpeercert()['subject'])['commonName']]
"""


def test_ssl_and_hashlib_are_built_in(py: CodeSandbox) -> None:
    r = py.run("import ssl, _ssl, _hashlib, sys\n"
               "[ssl.OPENSSL_VERSION, 'ssl' in sys.builtin_module_names,"
               " '_hashlib' in sys.builtin_module_names, ssl.HAS_TLSv1_3]")
    assert r.error is None, r.error and r.error.stack
    version, ssl_builtin, hashlib_builtin, tls13 = r.value
    assert version.startswith("OpenSSL 3.0.") and ssl_builtin is False and hashlib_builtin
    assert tls13 is True


def test_default_context_loads_the_ca_bundle(py: CodeSandbox) -> None:
    r = py.run("import ssl\nctx = ssl.create_default_context()\n"
               "[ctx.cert_store_stats()['x509_ca'], ssl.get_default_verify_paths().cafile,"
               " ctx.verify_mode == ssl.CERT_REQUIRED, ctx.check_hostname]")
    assert r.error is None, r.error and r.error.stack
    count, cafile, required, check_hostname = r.value
    assert count > 100 and cafile == "/usr/lib/ssl/cert.pem" and required and check_hostname


def test_tls13_handshake_and_data_in_the_guest(py: CodeSandbox, pki: dict[str, bytes]) -> None:
    r = py.run("CAFILE = 'ca.pem'\n" + HANDSHAKE, files=pki)
    assert r.error is None, r.error and r.error.stack
    assert r.value == ["TLSv1.3", r.value[1], b"ping over tls", b"PING OVER TLS", "localhost"]
    assert r.value[1].startswith("TLS_")


def test_wrong_ca_is_a_verification_error(py: CodeSandbox, pki: dict[str, bytes]) -> None:
    r = py.run("CAFILE = 'other-ca.pem'\n" + HANDSHAKE, files=pki)
    assert r.error is not None and r.error.type == "SSLCertVerificationError"
    assert "certificate verify failed: unable to get local issuer certificate" in r.error.message


def test_hashlib_still_has_every_algorithm(py: CodeSandbox) -> None:
    r = py.run("import hashlib\n"
               "[hashlib.sha256(b'abc').hexdigest(), hashlib.sha3_256(b'abc').hexdigest(),"
               " hashlib.blake2b(b'abc', digest_size=16).hexdigest(),"
               " hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 1000).hex(),"
               " hashlib.scrypt(b'pw', salt=b'salt', n=16, r=8, p=1, dklen=16).hex(),"
               " type(hashlib.sha256()).__module__]")
    assert r.error is None, r.error and r.error.stack
    assert r.value == [hashlib.sha256(b"abc").hexdigest(), hashlib.sha3_256(b"abc").hexdigest(),
                       hashlib.blake2b(b"abc", digest_size=16).hexdigest(),
                       hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1000).hex(),
                       hashlib.scrypt(b"pw", salt=b"salt", n=16, r=8, p=1, dklen=16).hex(),
                       "_hashlib"]


def test_openssl_random_differs_in_every_restore_of_a_snapshot() -> None:
    """A snapshot taken after OpenSSL's generator was used holds its state: each sandbox restored
    from it must still draw its own bytes (no repeated TLS randoms, keys or nonces)."""
    code = "import ssl\nssl.RAND_bytes(16).hex()"
    with CodeSandbox("python", keep_state=True) as box:
        before = box.run(code).value
        snap = box.snapshot()
        after = box.run(code).value
        with CodeSandbox("python", snapshot=snap, keep_state=True) as a, \
                CodeSandbox("python", snapshot=snap, keep_state=True) as b:
            ra, rb = a.run(code).value, b.run(code).value
            ra2 = a.run(code).value
        box.restore(snap)
        rc = box.run(code).value
    values = [before, after, ra, rb, ra2, rc]
    assert all(isinstance(v, str) and len(v) == 32 for v in values)
    assert len(set(values)) == len(values)


# OPENSSL_ia32cap_P after OpenSSL's start-up CPU detection, from a native program linked with the
# guest's libcrypto.a
CAPS_PROGRAM = r"""
#include <stdio.h>
#include <openssl/crypto.h>
extern unsigned int OPENSSL_ia32cap_P[4];
int main(void)
{
    OPENSSL_init_crypto(0, NULL);
    printf("%u %u %u %u\n", OPENSSL_ia32cap_P[0], OPENSSL_ia32cap_P[1], OPENSSL_ia32cap_P[2],
           OPENSSL_ia32cap_P[3]);
    return 0;
}
"""
BEYOND_V3_LEAF7_EBX = sum(1 << b for b in (16, 17, 19, 21, 26, 27, 28, 29, 30, 31))


def test_openssl_cpu_dispatch_stays_within_the_portable_baseline(tmp_path: Path) -> None:
    """Even with every capability bit forced on (OPENSSL_ia32cap, as a host with all of them
    would report), the vector the guest's OpenSSL dispatches on holds no AVX-512, VAES,
    VPCLMULQDQ, GFNI, SHA or ADX: the warm snapshot keeps it, and a v3 host may lack them."""
    prefix = Path(__file__).resolve().parents[2] / "build" / "openssl" / "prefix"
    (tmp_path / "caps.c").write_text(CAPS_PROGRAM)
    subprocess.run(["musl-gcc", "-static", "-I", str(prefix / "include"), "caps.c",
                    str(prefix / "lib" / "libcrypto.a"), "-o", "caps"], cwd=tmp_path, check=True)
    for env in ({}, {"OPENSSL_ia32cap": ":0xffffffffffffffff"}):
        out = subprocess.run([str(tmp_path / "caps")], env=env, check=True, capture_output=True,
                             text=True).stdout.split()
        words = [int(w) for w in out]
        assert words[2] & BEYOND_V3_LEAF7_EBX == 0 and words[3] == 0, (env, out)
