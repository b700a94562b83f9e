"""TLS: with --tls-cert and --tls-key the server speaks HTTPS only, verified against its own cert."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
import urllib.error

import numpy as np
import pytest

from mlserve.examples import write_identity_onnx
from tests.server.http import call, infer_body, output
from tests.server_process import MlserveProcess

x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificate")


def _self_signed(folder):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_only(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    cert, key = _self_signed(tmp_path)
    proc = MlserveProcess(tmp_path / "repo", "--tls-cert", str(cert), "--tls-key", str(key),
                          log_path=tmp_path / "log")
    context = ssl.create_default_context(cafile=str(cert))
    https = proc.url.replace("http://", "https://")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(f"{https}/v2/health/ready", context=context, timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert proc.proc.poll() is None, proc.log()
                assert time.monotonic() < deadline, proc.log()
                time.sleep(0.1)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        answer = call(f"{https}/v2/models/identity/infer", infer_body(x), context=context)
        assert answer.status == 200
        np.testing.assert_array_equal(output(answer), x)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            call(f"{proc.url}/v2/health/ready", timeout=5)  # plain HTTP is not served
    finally:
        assert proc.stop() == 0, proc.log()
