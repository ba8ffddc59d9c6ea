"""A certificate authority of a test's own, made with the openssl command: certificates for
servers (DNS names, SRV-IDs, XmppAddrs) and for clients (XEP-0178: XmppAddrs of accounts)."""

import os
import subprocess


XMPP_ADDR, SRV_NAME = "1.3.6.1.5.5.7.8.5", "1.3.6.1.5.5.7.8.7"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class CertAuthority:
    """A certificate authority of the test's own, and certificates it issues for domains."""

    def __init__(self, d):
        self.dir = d
        self.crt, self.key = f"{d}/ca.crt", f"{d}/ca.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "2", "-subj", "/CN=Starling test CA", "-keyout", self.key, "-out", self.crt,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, domain, name=None, san=None, usage="serverAuth,clientAuth"):
        """A certificate for `domain` (its subject CN); its subjectAltName is `san` (OpenSSL's
        syntax), by default the DNS name of the domain; `usage`: its extended key usage.
        Returns (certificate file, key file)."""
        name = name or domain
        key, csr, crt, ext = (f"{self.dir}/{name}.{x}" for x in ("key", "csr", "crt", "ext"))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", f"/CN={domain}", "-keyout", key, "-out", csr)
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san or 'DNS:' + domain}\nextendedKeyUsage={usage}\n"
                    "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.crt, "-CAkey", self.key, "-CAcreateserial",
                "-days", "2", "-out", crt, "-extfile", ext)
        return crt, key

    def client(self, name, *jids, usage="clientAuth"):
        """A client certificate naming `jids` by XmppAddr (XEP-0178)."""
        san = ",".join(f"otherName:{XMPP_ADDR};UTF8:{j}" for j in jids)
        return self.issue(jids[0] if jids else name, name=name, san=san, usage=usage)

    def self_signed(self, domain, name, san=None):
        key, crt = f"{self.dir}/{name}.key", f"{self.dir}/{name}.crt"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "2", "-subj", f"/CN={domain}", "-addext", f"subjectAltName={san or 'DNS:' + domain}",
                "-keyout", key, "-out", crt)
        return crt, key

    def revoke(self, crt):
        """Adds the certificate `crt` to the CA's list of revoked ones (`openssl ca`)."""
        openssl("ca", "-config", self._ca_config(), "-revoke", crt)

    def crl(self, path):
        """Writes the CA's current revocation list (PEM, RFC 5280, valid a day) to `path`, as a
        new file put in place (a server watching `path` sees it change at once, never half of it)."""
        tmp = f"{path}.new"
        openssl("ca", "-config", self._ca_config(), "-gencrl", "-out", tmp)
        os.replace(tmp, path)
        return path

    def _ca_config(self):
        cnf = f"{self.dir}/ca.cnf"
        if not os.path.exists(cnf):
            open(f"{self.dir}/index.txt", "w").close()
            with open(f"{self.dir}/crlnumber", "w") as f:
                f.write("01\n")
            with open(cnf, "w") as f:
                f.write(f"[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = {self.dir}/index.txt\n"
                        f"crlnumber = {self.dir}/crlnumber\ncertificate = {self.crt}\n"
                        f"private_key = {self.key}\ndefault_md = sha256\ndefault_crl_days = 1\n")
        return cnf
