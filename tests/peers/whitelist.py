#!/usr/bin/python3
"""Test-time minting of DRIM-M whitelists ("liste blanche") signed like the ANS ones.

The Rust verifier must be tested against lists signed by independent, real tools, in the agency's
exact XAdES-BASELINE-B profile (DRIM-M.md section 5.2), without committing any private key. So this
script mints a throw-away look-alike of the IGC-Sante TEST PKI with `openssl ca`, writes lists in the
2026/2024 layouts, has `xmlsec1` compute the digests and the signature, and forges the broken
variants homologation may feed us. Debian's python3 with stdlib + lxml only.

    whitelist.py pki DIR [--crl-base URL] [--key-bits N]
    whitelist.py list OUT [--domains N] [--generated ISO] [--layout 2026|2024]
    whitelist.py sign IN OUT --key K --cert C [--chain CERT ...] [--c14n exc|inclusive]
                 [--transform filter2|enveloped] [--signature-method rsa-sha256|rsa-sha1|rsa-md5]
                 [--digest sha256|sha1] [--signing-time ISO] [--signing-certificate-of CERT]
                 [--mime-type TYPE] [--allow-key-mismatch]
    whitelist.py tamper IN OUT --how H [--size-mb N]
    whitelist.py selftest DIR

Exit status: 0 success, 1 a peer tool failed or selftest disagreed, 2 usage error.
"""
import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from xml.sax.saxutils import escape

try:
    from lxml import etree
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit("whitelist.py: lxml is missing; run it with Debian's /usr/bin/python3 (python3-lxml)")

NS_2026 = "https://github.com/ansforge/DRIM-M_DATA"
NS_2024 = "https://listeblanche.mesimagesmedicales.fr/schema"
DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
C14N = {"exc": "http://www.w3.org/2001/10/xml-exc-c14n#",
        "inclusive": "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"}
SIGNATURE_METHODS = {"rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                     "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                     "rsa-md5": "http://www.w3.org/2001/04/xmldsig-more#rsa-md5"}
DIGESTS = {"sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
           "sha1": "http://www.w3.org/2000/09/xmldsig#sha1"}
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
# xmlsec1 knows no schema for XAdES, so it must be told which attribute is an ID for URI="#xades-id-..".
ID_ATTR = ["--id-attr:Id", XADES + ":SignedProperties"]

ORG = "/C=FR/O=DRIMBOX TEST/OU=IGC-SANTE TEST"
ROOT_DN = ORG + "/CN=TEST AC RACINE DRIMBOX ELEMENTAIRE"
INTERMEDIATE_DN = ORG + "/CN=TEST AC DRIMBOX ELEMENTAIRE ORGANISATIONS"
SIGNER_CN = "Liste Blanche DRIM-M"
SIGNER_OU = "318751275100020"
ANS_O = "/C=FR/ST=Paris (75)/O=AGENCE DU NUMERIQUE EN SANTE"
SIGNER_DN = "%s/OU=%s/CN=%s" % (ANS_O, SIGNER_OU, SIGNER_CN)
LEAF_POLICY = "1.2.250.1.213.1.7.2.1.1.1.1"

# The 17 domains of the 2026 test list (section 5.1); host names and non-ANS DNs are synthetic.
DOMAINS = [("3", "ANS"), ("4", "ANS"), ("5", "ANS"), ("7", "ANS"), ("175", "E-MEDIA"),
           ("178", "Softway"), ("156", "EDL"), ("157", "EVOLUCARE"), ("172", "TELEMIS"),
           ("154", "ENOVACOM"), ("1541", "ENOVACOM"), ("1542", "ENOVACOM"), ("1543", "ENOVACOM"),
           ("167", "MEDSQUARE"), ("161", "DEDALUS"), ("169", "IMADIS"), ("155", "MAINCARE")]

TAMPERS = ["content-char", "attribute", "second-signature", "wrapping", "wrapping-move", "unsigned",
           "truncate", "billion-laughs", "external-entity", "huge"]


class UsageError(Exception):
    """Bad option or input file: exit 2."""


class ToolError(Exception):
    """A peer tool (openssl, xmlsec1, xmllint) failed: exit 1."""


def utcnow():
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def asn1time(t):
    return t.strftime("%Y%m%d%H%M%SZ")


def run(cmd, timeout=120, check=True):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise ToolError("%s not found on PATH" % cmd[0])
    if check and p.returncode != 0:
        raise ToolError("%s failed (rc=%d): %s" % (" ".join(cmd), p.returncode,
                                                   p.stderr.decode(errors="replace").strip()[-2000:]))
    return p


def read_input(path, option):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError("%s %s: %s" % (option, path, e.strerror))


def write_bytes(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def pem_certs(path, option):
    text = read_input(path, option).decode("ascii", errors="replace")
    ders = [base64.b64decode(m) for m in
            re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)]
    if not ders:
        raise UsageError("%s %s: no PEM CERTIFICATE block" % (option, path))
    return ders


# --------------------------------------------------------------------------------------------
# DER: just enough to lift issuer and serial out of a certificate for IssuerSerialV2.

def der_header(buf, off):
    tag = buf[off]
    ln = buf[off + 1]
    off += 2
    if ln & 0x80:
        n = ln & 0x7F
        ln = int.from_bytes(buf[off:off + n], "big")
        off += n
    return tag, off, ln


def der(tag, content):
    n = len(content)
    if n < 0x80:
        head = bytes([tag, n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([tag, 0x80 | len(size)]) + size
    return head + content


def issuer_serial_v2(cert_der):
    """DER of IssuerSerial ::= SEQUENCE { GeneralNames{ [4] directoryName issuer }, serial }."""
    _, body, _ = der_header(cert_der, 0)           # Certificate
    _, p, _ = der_header(cert_der, body)           # tbsCertificate
    tag, c, ln = der_header(cert_der, p)
    if tag == 0xA0:                                # explicit version
        p = c + ln
        tag, c, ln = der_header(cert_der, p)
    serial = cert_der[p:c + ln]
    p = c + ln
    _, c, ln = der_header(cert_der, p)             # signature AlgorithmIdentifier
    p = c + ln
    _, c, ln = der_header(cert_der, p)
    issuer = cert_der[p:c + ln]
    # directoryName is a CHOICE (Name), hence EXPLICIT even in an IMPLICIT module.
    return der(0x30, der(0x30, der(0xA4, issuer)) + serial)


# --------------------------------------------------------------------------------------------
# pki

CA_CNF = """\
[ ca ]
default_ca = CA_default

[ CA_default ]
dir              = {dir}
database         = $dir/index.txt
new_certs_dir    = $dir/newcerts
serial           = $dir/serial
crlnumber        = $dir/crlnumber
certificate      = {cert}
private_key      = {key}
default_md       = sha256
policy           = policy_any
# Several variants share the good signer's DN on purpose (expired, notyet, revoked...).
unique_subject   = no
email_in_dn      = no
copy_extensions  = none
crl_extensions   = crl_ext
default_crl_days = 7

[ policy_any ]
countryName            = optional
stateOrProvinceName    = optional
organizationName       = optional
organizationalUnitName = optional
commonName             = supplied

[ req ]
distinguished_name = req_dn
[ req_dn ]

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ ext_root ]
basicConstraints     = critical, CA:TRUE
keyUsage             = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ ext_intermediate ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
crlDistributionPoints  = URI:{crl_url}

[ ext_signer ]
basicConstraints       = CA:FALSE
keyUsage               = critical, digitalSignature, nonRepudiation
extendedKeyUsage       = emailProtection
certificatePolicies    = {policy}
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
crlDistributionPoints  = URI:{crl_url}

[ ext_nokeyusage ]
basicConstraints       = CA:FALSE
keyUsage               = critical, keyEncipherment
extendedKeyUsage       = emailProtection
certificatePolicies    = {policy}
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
crlDistributionPoints  = URI:{crl_url}
"""


class Pki:
    def __init__(self, out, crl_base, bits):
        self.out = out
        self.crl_base = crl_base.rstrip("/")
        self.bits = bits
        self.files = {}
        self.signers = {}
        self.now = utcnow()

    def path(self, name):
        return os.path.join(self.out, name)

    def note(self, name, role, **extra):
        self.files[name] = dict(role=role, **extra)

    def days(self, n):
        return self.now + dt.timedelta(days=n)

    def genkey(self, name):
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % self.bits,
             "-out", self.path(name + ".key")])
        os.chmod(self.path(name + ".key"), 0o600)

    def new_ca_db(self, name, cert, key):
        """One `openssl ca` database per issuing CA, so each can revoke and publish its own CRL."""
        d = self.path(os.path.join("ca", name))
        os.makedirs(os.path.join(d, "newcerts"))
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
            # 16 random bytes like the IGC-Sante serials; top bit clear keeps the INTEGER positive.
            f.write("%032X\n" % (secrets.randbits(127) | (1 << 120)))
        with open(os.path.join(d, "crlnumber"), "w") as f:
            f.write("1000\n")
        cnf = os.path.join(d, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write(CA_CNF.format(dir=d, cert=self.path(cert), key=self.path(key),
                                  crl_url="%s/%s.crl" % (self.crl_base, name), policy=LEAF_POLICY))
        return cnf

    def issue(self, ca, name, subj, ext, start, end, selfsign=False):
        """Key + CSR + certificate NAME.pem (and NAME.der) issued by CA (a CA database name)."""
        cnf = self.path(os.path.join("ca", ca, "openssl.cnf"))
        self.genkey(name)
        csr = self.path(os.path.join("ca", ca, name + ".csr"))
        run(["openssl", "req", "-new", "-config", cnf, "-key", self.path(name + ".key"),
             "-subj", subj, "-out", csr])
        cmd = ["openssl", "ca", "-batch", "-notext", "-preserveDN", "-config", cnf,
               "-extensions", ext, "-startdate", asn1time(start), "-enddate", asn1time(end),
               "-in", csr, "-out", self.path(name + ".pem")]
        if selfsign:
            cmd += ["-selfsign", "-keyfile", self.path(name + ".key")]
        run(cmd)
        run(["openssl", "x509", "-in", self.path(name + ".pem"), "-outform", "DER",
             "-out", self.path(name + ".der")])
        return name + ".pem"

    def cert_info(self, name):
        p = run(["openssl", "x509", "-in", self.path(name + ".pem"), "-noout", "-serial",
                 "-subject", "-issuer", "-startdate", "-enddate", "-nameopt", "RFC2253"])
        info = {}
        for line in p.stdout.decode().splitlines():
            k, _, v = line.partition("=")
            info[k] = v
        return {"subject": info.get("subject"), "issuer": info.get("issuer"),
                "serial": info.get("serial"), "not_before": info.get("notBefore"),
                "not_after": info.get("notAfter")}

    def cert(self, name, role):
        self.note(name + ".pem", role, kind="certificate PEM", **self.cert_info(name))
        self.note(name + ".der", "same certificate as %s.pem, DER" % name, kind="certificate DER")
        self.note(name + ".key", "private key of %s.pem (PKCS#8 PEM, unencrypted)" % name,
                  kind="private key")

    def signer(self, case, name, chain, expect, why):
        self.signers[case] = {"cert": name + ".pem", "key": name + ".key", "chain": chain,
                              "expect": expect, "why": why}

    def ca(self, name, subj, issuer, ext, role, start, end):
        cnf = self.new_ca_db(name, name + ".pem", name + ".key")
        if issuer is None:
            self.issue(name, name, subj, ext, start, end, selfsign=True)
        else:
            self.issue(issuer, name, subj, ext, start, end)
        self.cert(name, role)
        return cnf

    def gencrl(self, ca, out, last, nxt, role):
        cnf = self.path(os.path.join("ca", ca, "openssl.cnf"))
        run(["openssl", "ca", "-batch", "-config", cnf, "-gencrl", "-crl_lastupdate", asn1time(last),
             "-crl_nextupdate", asn1time(nxt), "-out", self.path(out + ".crl.pem")])
        run(["openssl", "crl", "-in", self.path(out + ".crl.pem"), "-outform", "DER",
             "-out", self.path(out + ".crl")])
        self.note(out + ".crl", role + " (DER)", kind="CRL DER", issuer_ca=ca + ".pem",
                  last_update=iso(last), next_update=iso(nxt))
        self.note(out + ".crl.pem", role + " (PEM)", kind="CRL PEM", issuer_ca=ca + ".pem",
                  last_update=iso(last), next_update=iso(nxt))

    def revoke(self, ca, name):
        cnf = self.path(os.path.join("ca", ca, "openssl.cnf"))
        run(["openssl", "ca", "-batch", "-config", cnf, "-revoke", self.path(name + ".pem"),
             "-crl_reason", "keyCompromise"])


def mint_pki(out, crl_base="http://crl.invalid", bits=2048):
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError("pki DIR %s: exists and is not an empty directory" % out)
    if not re.match(r"^https?://[^\s]+$", crl_base):
        raise UsageError("--crl-base %s: expected an http(s):// URL" % crl_base)
    os.makedirs(os.path.join(out, "ca"), exist_ok=True)
    k = Pki(out, crl_base, bits)
    ca_start, ca_end = k.days(-2), k.days(3650)
    good = (k.days(-1), k.days(365))
    chain = ["intermediate.pem", "root.pem"]

    k.ca("root", ROOT_DN, None, "ext_root", "trust anchor: look-alike of TEST AC RACINE IGC-SANTE "
         "ELEMENTAIRE (xmlsec1 --trusted-pem)", ca_start, ca_end)
    k.ca("intermediate", INTERMEDIATE_DN, "root", "ext_intermediate", "intermediate: look-alike of "
         "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS (xmlsec1 --untrusted-pem)", ca_start, ca_end)

    k.issue("intermediate", "signer", SIGNER_DN, "ext_signer", *good)
    k.cert("signer", "good whitelist signer (ORG SIGN look-alike)")
    k.signer("good", "signer", chain, "accept", "the agency profile")

    k.issue("intermediate", "expired", SIGNER_DN, "ext_signer", k.days(-400), k.days(-30))
    k.cert("expired", "signer whose validity lies entirely in the past")
    k.signer("expired", "expired", chain, "reject", "certificate expired")

    k.issue("intermediate", "notyet", SIGNER_DN, "ext_signer", k.days(30), k.days(400))
    k.cert("notyet", "signer whose validity starts in 30 days")
    k.signer("notyet", "notyet", chain, "reject", "certificate not yet valid")

    # Wrong values chosen to defeat prefix / near-miss comparisons, not just equality.
    k.issue("intermediate", "wrongcn", "%s/OU=%s/CN=%s2" % (ANS_O, SIGNER_OU, SIGNER_CN),
            "ext_signer", *good)
    k.cert("wrongcn", "signer with CN=Liste Blanche DRIM-M2 (prefix of the good CN)")
    k.signer("wrongcn", "wrongcn", chain, "reject", "subject CN differs")

    k.issue("intermediate", "wrongou", "%s/OU=318751275100021/CN=%s" % (ANS_O, SIGNER_CN),
            "ext_signer", *good)
    k.cert("wrongou", "signer with OU=318751275100021 (last digit differs)")
    k.signer("wrongou", "wrongou", chain, "reject", "subject OU differs")

    k.issue("intermediate", "nokeyusage", SIGNER_DN, "ext_nokeyusage", *good)
    k.cert("nokeyusage", "signer whose KU is keyEncipherment only")
    k.signer("nokeyusage", "nokeyusage", chain, "reject", "KU lacks digitalSignature/nonRepudiation")

    k.issue("intermediate", "revoked", SIGNER_DN, "ext_signer", *good)
    k.cert("revoked", "signer revoked (keyCompromise) in intermediate.crl")
    k.signer("revoked", "revoked", chain, "reject", "listed in intermediate.crl")

    k.issue("intermediate", "proof", "/C=FR/O=DRIMBOX TEST/OU=EDITEUR/CN=DRIMbox editor proof",
            "ext_signer", *good)
    k.cert("proof", "vendor certificate for the signed proof of verification (section 5.4)")
    k.signer("proof", "proof", chain, "reject", "not the whitelist signer (CN/OU)")

    # The selfsigned variant needs a database of its own only because `openssl ca -selfsign` does.
    k.new_ca_db("selfsigned", "selfsigned.pem", "selfsigned.key")
    k.issue("selfsigned", "selfsigned", SIGNER_DN, "ext_signer", *good, selfsign=True)
    k.cert("selfsigned", "self-signed certificate with the good DN and extensions")
    k.signer("selfsigned", "selfsigned", [], "reject", "does not chain to the root")

    other = "/C=FR/O=DRIMBOX AUTRE/OU=IGC AUTRE"
    k.ca("other-root", other + "/CN=AUTRE AC RACINE", None, "ext_root",
         "unrelated root (not trusted)", ca_start, ca_end)
    k.ca("other-intermediate", other + "/CN=AUTRE AC ORGANISATIONS", "other-root",
         "ext_intermediate", "intermediate under other-root", ca_start, ca_end)
    k.issue("other-intermediate", "otherca", SIGNER_DN, "ext_signer", *good)
    k.cert("otherca", "good DN and extensions, issued by other-intermediate")
    k.signer("otherca", "otherca", ["other-intermediate.pem", "other-root.pem"], "reject",
             "chains to an untrusted root")

    k.ca("revoked-intermediate", ORG + "/CN=TEST AC DRIMBOX ELEMENTAIRE ORGANISATIONS REVOQUEE",
         "root", "ext_intermediate", "second intermediate, revoked in root.crl", ca_start, ca_end)
    k.issue("revoked-intermediate", "revoked-intermediate-signer", SIGNER_DN, "ext_signer", *good)
    k.cert("revoked-intermediate-signer", "good DN, issued by revoked-intermediate")
    k.signer("revoked-intermediate", "revoked-intermediate-signer",
             ["revoked-intermediate.pem", "root.pem"], "reject", "its intermediate is in root.crl")

    # Stale CRL first: it predates the revocation, as a replayed old CRL would.
    k.gencrl("intermediate", "intermediate-stale", k.days(-30), k.days(-1),
             "stale intermediate CRL: nextUpdate in the past, issued before 'revoked' was revoked")
    k.revoke("intermediate", "revoked")
    k.revoke("root", "revoked-intermediate")
    fresh = (k.now - dt.timedelta(hours=1), k.days(7))
    k.gencrl("intermediate", "intermediate", *fresh, "intermediate CRL, lists revoked.pem")
    k.gencrl("root", "root", *fresh, "root CRL, lists revoked-intermediate.pem")
    k.gencrl("revoked-intermediate", "revoked-intermediate", *fresh, "empty CRL of revoked-intermediate")
    k.gencrl("other-root", "other-root", *fresh, "empty CRL of other-root")
    k.gencrl("other-intermediate", "other-intermediate", *fresh, "empty CRL of other-intermediate")

    k.files["ca/"] = {"role": "openssl ca databases, configs and CSRs (one directory per issuing CA)"}
    k.files["manifest.json"] = {"role": "this file"}
    manifest = {
        "generated": iso(k.now),
        "openssl": run(["openssl", "version"]).stdout.decode().strip(),
        "crl_base": k.crl_base,
        "expected_signer": {"cn": SIGNER_CN, "ou": SIGNER_OU},
        "trust": {"trusted": "root.pem", "untrusted": "intermediate.pem",
                  "crls": ["intermediate.crl", "root.crl"]},
        "signers": k.signers,
        "files": k.files,
    }
    with open(k.path("manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


# --------------------------------------------------------------------------------------------
# list

def parse_iso(value, option):
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", value):
        raise UsageError("%s %s: expected YYYY-MM-DDTHH:MM:SSZ" % (option, value))
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def make_list(domains=17, generated=None, layout="2026"):
    if domains < 0:
        raise UsageError("--domains %d: must be >= 0" % domains)
    gen = generated or iso(utcnow())
    t = parse_iso(gen, "--generated")
    ns = NS_2026 if layout == "2026" else NS_2024
    out = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>'
           '<ListeBlancheDRIM-M xmlns="%s" versionFormat="1.0.0">\n' % ns,
           "    <DateDeGeneration>%s</DateDeGeneration>\n" % escape(gen),
           "    <ListeDomaines>\n"]
    for i in range(domains):
        ident, org = DOMAINS[i] if i < len(DOMAINS) else (str(9000 + i), "TEST")
        db = "db%s.test.mesimagesmedicales.fr" % ident
        vi = "vi%s.test.mesimagesmedicales.fr" % ident
        if org == "ANS":
            dn = "CN=%s,OU=%s,O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR" % (db, SIGNER_OU)
            support = "drim-m@esante.gouv.fr"
        else:
            dn = "CN=%s,O=%s,C=FR" % (db, org)
            support = "support@%s.invalid" % org.lower()
        if layout == "2024":
            # The 2024 list's quirks (section 5.1) that a lenient parser must survive.
            if ident == "1541":
                ident = "154"
            if ident == "175":
                vi = db
        maj = t - dt.timedelta(days=7 * i + 3, hours=i, minutes=3 * i)
        fields = [("Identifiant", ident), ("db", db), ("vi", vi), ("Denomination", org),
                  ("DNCertificatOperateur", dn), ("SupportContact", support)]
        if layout == "2024":
            fields.append(("ResponsableContact", support.replace("support@", "responsable@")))
        fields.append(("DateMAJ", iso(maj)))
        out.append("      <Domaine>\n")
        out.extend("        <%s>%s</%s>\n" % (k, escape(v), k) for k, v in fields)
        out.append("      </Domaine>\n")
    out.append("    </ListeDomaines>\n</ListeBlancheDRIM-M>")
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------------------------
# sign

SAFE_PARSER = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def root_end(data, what):
    """Offset of the root element's end tag: the signature goes right before it, as DSS puts it."""
    try:
        root = etree.fromstring(data, etree.XMLParser(**SAFE_PARSER))
    except etree.XMLSyntaxError as e:
        raise UsageError("%s: not well-formed XML: %s" % (what, e))
    local = etree.QName(root).localname
    qname = "%s:%s" % (root.prefix, local) if root.prefix else local
    end = data.rfind(("</%s" % qname).encode())
    if end < 0 or data[end:].strip() != ("</%s>" % qname).encode():
        raise UsageError("%s: cannot locate the root end tag </%s>" % (what, qname))
    return root, end


def signature_template(sid, c14n, sig_method, digest, transform, signing_time, cert_digest,
                       issuer_serial, mime):
    c = '<ds:Transform Algorithm="%s"/>' % C14N[c14n]
    if transform == "filter2":
        t1 = ('<ds:Transform Algorithm="%s"><dsig-filter2:XPath xmlns:dsig-filter2="%s" '
              'Filter="subtract">/descendant::ds:Signature</dsig-filter2:XPath></ds:Transform>'
              % (FILTER2, FILTER2))
    else:
        t1 = '<ds:Transform Algorithm="%s"/>' % ENVELOPED
    dm = '<ds:DigestMethod Algorithm="%s"/>' % DIGESTS[digest]
    # No KeyInfo yet: xmlsec1 would otherwise try to use (and verify) it to find the signing key.
    return (
        '<ds:Signature xmlns:ds="%(ds)s" Id="id-%(sid)s"><ds:SignedInfo>'
        '<ds:CanonicalizationMethod Algorithm="%(c14n)s"/><ds:SignatureMethod Algorithm="%(sm)s"/>'
        '<ds:Reference Id="r-id-%(sid)s-1" URI=""><ds:Transforms>%(t1)s%(c)s</ds:Transforms>%(dm)s'
        '<ds:DigestValue/></ds:Reference>'
        '<ds:Reference Type="%(spt)s" URI="#xades-id-%(sid)s"><ds:Transforms>%(c)s</ds:Transforms>'
        '%(dm)s<ds:DigestValue/></ds:Reference></ds:SignedInfo>'
        '<ds:SignatureValue Id="value-id-%(sid)s"/>'
        '<ds:Object><xades:QualifyingProperties xmlns:xades="%(xades)s" Target="#id-%(sid)s">'
        '<xades:SignedProperties Id="xades-id-%(sid)s"><xades:SignedSignatureProperties>'
        '<xades:SigningTime>%(st)s</xades:SigningTime><xades:SigningCertificateV2><xades:Cert>'
        '<xades:CertDigest><ds:DigestMethod Algorithm="%(sha512)s"/><ds:DigestValue>%(cd)s'
        '</ds:DigestValue></xades:CertDigest><xades:IssuerSerialV2>%(isv)s</xades:IssuerSerialV2>'
        '</xades:Cert></xades:SigningCertificateV2></xades:SignedSignatureProperties>'
        '<xades:SignedDataObjectProperties><xades:DataObjectFormat ObjectReference="#r-id-%(sid)s-1">'
        '<xades:MimeType>%(mime)s</xades:MimeType></xades:DataObjectFormat>'
        '</xades:SignedDataObjectProperties></xades:SignedProperties></xades:QualifyingProperties>'
        '</ds:Object></ds:Signature>'
        % dict(ds=DS, sid=sid, c14n=C14N[c14n], sm=SIGNATURE_METHODS[sig_method], t1=t1, c=c, dm=dm,
               spt=SIGNED_PROPERTIES_TYPE, xades=XADES, st=escape(signing_time), sha512=SHA512,
               cd=cert_digest, isv=issuer_serial, mime=escape(mime))).encode()


def sign(inp, out, key, cert, chain=(), c14n="exc", transform="filter2", signature_method="rsa-sha256",
         digest="sha256", signing_time=None, signing_certificate_of=None, mime_type="text/xml",
         allow_key_mismatch=False):
    data = read_input(inp, "IN")
    root, end = root_end(data, "IN %s" % inp)
    if root.find("{%s}Signature" % DS) is not None:
        raise UsageError("IN %s: already has a ds:Signature child (use tamper --how second-signature)"
                         % inp)
    read_input(key, "--key")
    signer = pem_certs(cert, "--cert")[0]
    chain_ders = [d for c in chain for d in pem_certs(c, "--chain")]
    ref = pem_certs(signing_certificate_of, "--signing-certificate-of")[0] \
        if signing_certificate_of else signer
    st = signing_time or iso(utcnow())
    parse_iso(st, "--signing-time")
    if not allow_key_mismatch:
        a = run(["openssl", "pkey", "-in", key, "-pubout"]).stdout
        b = run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"]).stdout
        if a != b:
            raise UsageError("--key %s does not match --cert %s (pass --allow-key-mismatch to forge "
                             "a bad signature on purpose)" % (key, cert))

    sid = secrets.token_hex(16)
    tmpl = signature_template(sid, c14n, signature_method, digest, transform, st,
                              base64.b64encode(hashlib.sha512(ref).digest()).decode(),
                              base64.b64encode(issuer_serial_v2(ref)).decode(), mime_type)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp_in, tmp_out = out + ".tmpl.xml", out + ".xmlsec.xml"
    try:
        write_bytes(tmp_in, data[:end] + tmpl + data[end:])
        run(["xmlsec1", "--sign"] + ID_ATTR + ["--privkey-pem", "%s,%s" % (key, cert),
                                               "--output", tmp_out, tmp_in])
        signed = read_input(tmp_out, "xmlsec1 output")
    finally:
        for p in (tmp_in, tmp_out):
            if os.path.exists(p):
                os.unlink(p)
    # libxml2 re-serialises the document (newline after the XML declaration, trailing newline);
    # splicing only the Signature element back keeps every byte outside it as the input had it.
    start = signed.find(tmpl[:tmpl.index(b">") + 1])
    stop = signed.find(b"</ds:Signature>", start)
    if start < 0 or stop < 0:
        raise ToolError("xmlsec1 output lost the ds:Signature Id=id-%s element" % sid)
    sig = signed[start:stop + len(b"</ds:Signature>")]
    # SignatureValue is not covered by any digest, so its line breaks can go (DSS writes none).
    sig = re.sub(rb"(<ds:SignatureValue\b[^>]*>)([^<]*)(</ds:SignatureValue>)",
                 lambda g: g.group(1) + re.sub(rb"\s+", b"", g.group(2)) + g.group(3), sig)
    key_info = b"<ds:KeyInfo><ds:X509Data>" + b"".join(
        b"<ds:X509Certificate>" + base64.b64encode(d) + b"</ds:X509Certificate>"
        for d in [signer] + chain_ders) + b"</ds:X509Data></ds:KeyInfo>"
    sig = sig.replace(b"</ds:SignatureValue>", b"</ds:SignatureValue>" + key_info, 1)
    write_bytes(out, data[:end] + sig + data[end:])
    return sid


# --------------------------------------------------------------------------------------------
# tamper

def signature_span(data, what):
    m = re.search(rb"<(\w+:)?Signature\b[^>]*xmlns(:\w+)?=\"http://www\.w3\.org/2000/09/xmldsig#\"",
                  data)
    if not m:
        raise UsageError("%s: no ds:Signature element" % what)
    start = m.start()
    close = b"</" + (m.group(1) or b"") + b"Signature>"
    stop = data.find(close, start)
    if stop < 0:
        raise UsageError("%s: ds:Signature is not closed" % what)
    return start, stop + len(close), (m.group(1) or b"")


def first_db(data, what):
    m = re.search(rb"<((?:[\w.-]+:)?db)>([^<]*)</\1>", data)
    if not m:
        raise UsageError("%s: no <db> element" % what)
    return m


def forged_domaine(ns):
    return ('<ListeDomaines xmlns="%s"><Domaine><Identifiant>666</Identifiant>'
            '<db>db666.attacker.invalid</db><vi>vi666.attacker.invalid</vi>'
            '<Denomination>ATTACKER</Denomination>'
            '<DNCertificatOperateur>CN=db666.attacker.invalid,O=ATTACKER,C=FR</DNCertificatOperateur>'
            '<SupportContact>x@attacker.invalid</SupportContact><DateMAJ>%s</DateMAJ></Domaine>'
            '</ListeDomaines>' % (ns, iso(utcnow()))).encode()


def doctype_after_decl(data, root_name, internal_subset):
    decl = re.match(rb"<\?xml[^>]*\?>", data)
    at = decl.end() if decl else 0
    return data[:at] + b"<!DOCTYPE " + root_name + b" [" + internal_subset + b"]>" + data[at:]


def tamper(inp, out, how, size_mb=100):
    data = read_input(inp, "IN")
    what = "IN %s" % inp
    if how == "truncate":
        write_bytes(out, data[:len(data) // 2])
        return
    if how == "huge":
        tamper_huge(data, what, out, size_mb)
        return
    root_m = re.search(rb"<([\w.:-]+)[\s>]", re.sub(rb"<\?xml[^>]*\?>", b"", data, count=1))
    root_name = root_m.group(1) if root_m else b"ListeBlancheDRIM-M"
    ns_m = re.search(rb'<[\w.:-]+\s[^>]*\bxmlns="([^"]*)"', data)
    ns = ns_m.group(1).decode() if ns_m else NS_2026
    if how == "content-char":
        m = first_db(data, what)
        text = m.group(2)
        if not text:
            raise UsageError("%s: first <db> is empty" % what)
        new = (b"x" if text[:1] != b"x" else b"y") + text[1:]
        data = data[:m.start(2)] + new + data[m.end(2):]
    elif how == "attribute":
        m = re.search(rb'versionFormat="([^"]*)"', data)
        if not m:
            raise UsageError("%s: no versionFormat attribute" % what)
        v = m.group(1)
        new = v[:-1] + (b"%d" % ((int(v[-1:]) + 1) % 10) if v[-1:].isdigit() else v + b"1")
        data = data[:m.start(1)] + new + data[m.end(1):]
    elif how == "second-signature":
        s, e, _ = signature_span(data, what)
        data = data[:e] + data[s:e] + data[e:]
    elif how == "wrapping":
        # XSW against the filter2 profile: "subtract /descendant::ds:Signature" excludes everything
        # under ds:Signature from the digest, so forged domains hidden in an extra ds:Object keep the
        # signature valid. Only a verifier that reads ListeDomaines as a child of the root is safe.
        s, e, prefix = signature_span(data, what)
        close = b"</" + prefix + b"Signature>"
        obj = b"<" + prefix + b"Object>" + forged_domaine(ns) + b"</" + prefix + b"Object>"
        data = data[:e - len(close)] + obj + data[e - len(close):]
    elif how == "wrapping-move":
        # Classic XSW: forged list in the signed place, original moved into a ds:Object. With
        # URI="" this must break the digest; kept as a regression case for ID-based shortcuts.
        m = re.search(rb"<((?:[\w.-]+:)?ListeDomaines)>.*?</\1>", data, re.S)
        if not m:
            raise UsageError("%s: no ListeDomaines element" % what)
        original = m.group(0)
        forged = re.sub(rb"<ListeDomaines xmlns=\"[^\"]*\">", b"<ListeDomaines>", forged_domaine(ns))
        data = data[:m.start()] + forged + data[m.end():]
        s, e, prefix = signature_span(data, what)
        close = b"</" + prefix + b"Signature>"
        moved = original.replace(b"<ListeDomaines>", b'<ListeDomaines xmlns="%s">' % ns.encode(), 1)
        obj = b"<" + prefix + b"Object>" + moved + b"</" + prefix + b"Object>"
        data = data[:e - len(close)] + obj + data[e - len(close):]
    elif how == "unsigned":
        s, e, _ = signature_span(data, what)
        data = data[:s] + data[e:]
    elif how == "billion-laughs":
        ents = b'<!ENTITY lol "lol">' + b"".join(
            b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
            for i in range(1, 10))
        m = first_db(data, what)
        data = data[:m.end(2)] + b"&lol9;" + data[m.end(2):]
        data = doctype_after_decl(data, root_name, ents)
    elif how == "external-entity":
        m = first_db(data, what)
        data = data[:m.start(2)] + b"&xxe;" + data[m.end(2):]
        data = doctype_after_decl(data, root_name, b'<!ENTITY xxe SYSTEM "file:///etc/passwd">')
    else:
        raise UsageError("--how %s: expected one of %s" % (how, ", ".join(TAMPERS)))
    write_bytes(out, data)


def tamper_huge(data, what, out, size_mb):
    """Pad with comments just before ds:Signature: URI="" drops comments, so the signature stays
    valid and only a size limit can refuse the file. Written in 1 MiB chunks, never held in memory."""
    if size_mb <= 0:
        raise UsageError("--size-mb %d: must be > 0" % size_mb)
    try:
        s, _, _ = signature_span(data, what)
    except UsageError:
        _, s = root_end(data, what)
    target = size_mb * 1024 * 1024
    # libxml2 refuses a single comment above 10 MB without XML_PARSE_HUGE; stay well below.
    body = (b"x" * 1023 + b"\n") * 1024
    chunk = b"<!--" + body[:-7] + b"-->"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data[:s])
        left = target - len(data)
        while left >= len(chunk):
            f.write(chunk)
            left -= len(chunk)
        if left >= 7:
            f.write(b"<!--" + b"x" * (left - 7) + b"-->")
        f.write(data[s:])


# --------------------------------------------------------------------------------------------
# selftest

def xmlsec_verify(pki, path, trusted=("root.pem",), untrusted=("intermediate.pem",)):
    cmd = ["xmlsec1", "--verify"]
    for t in trusted:
        cmd += ["--trusted-pem", os.path.join(pki, t)]
    for u in untrusted:
        cmd += ["--untrusted-pem", os.path.join(pki, u)]
    cmd += ID_ATTR + ["--enabled-reference-uris", "empty,same-doc", path]
    try:
        p = run(cmd, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "ERROR (timeout)"
    lines = [ln.strip() for ln in (p.stdout + p.stderr).decode(errors="replace").splitlines()]
    if p.returncode == 0 and "OK" in lines:
        refs = [ln for ln in lines if ln.startswith("SignedInfo References")]
        return "OK" + (" %s" % refs[0].split(":")[-1].strip() if refs else "")
    if p.returncode < 0:
        return "ERROR (crashed: %s)" % signal.Signals(-p.returncode).name
    reasons = []
    for ln in lines:
        m = (re.search(r"parser error : (.*)", ln) or re.search(r"^C14N error : (.*?) :", ln)
             or re.search(r"msg=([^;]+)$", ln) or re.search(r":error=\d+:([^:]+):", ln))
        if m and "library function failed" not in m.group(1):
            reasons.append(m.group(1).strip())
        elif ln.startswith("Error:") and "failed to verify" not in ln:
            reasons.append(ln[6:].strip())
    reason = reasons[0] if reasons else ""
    if len(reason) > 60:
        reason = reason[:57] + "..."
    return ("FAIL" if "FAIL" in lines else "ERROR") + (" (%s)" % reason if reason else "")


def embed_crls(src, dst, crl_paths):
    """xmlsec1 1.2.37 has no --crl-pem: CRLs reach it only as X509CRL in the signature's X509Data.
    KeyInfo is outside every Reference, so adding them leaves the signature intact."""
    data = read_input(src, "IN")
    crls = b"".join(b"<ds:X509CRL>" + base64.b64encode(read_input(c, "CRL")) + b"</ds:X509CRL>"
                    for c in crl_paths)
    if b"</ds:X509Data>" not in data:
        raise UsageError("%s: no ds:X509Data to carry the CRLs" % src)
    write_bytes(dst, data.replace(b"</ds:X509Data>", crls + b"</ds:X509Data>", 1))


def selftest(base):
    base = os.path.abspath(base)
    marker = os.path.join(base, ".whitelist-selftest")
    if os.path.isdir(base) and os.listdir(base):
        if not os.path.exists(marker):
            raise UsageError("selftest DIR %s: not empty and not from a previous selftest" % base)
        for sub in ("pki", "lists", "cases"):
            shutil.rmtree(os.path.join(base, sub), ignore_errors=True)
    os.makedirs(base, exist_ok=True)
    open(marker, "w").close()
    t0 = time.monotonic()
    version = run(["xmlsec1", "--version"]).stdout.decode().strip()
    print("peers: %s; %s" % (version, run(["openssl", "version"]).stdout.decode().strip()))
    pki = os.path.join(base, "pki")
    man = mint_pki(pki, "http://127.0.0.1:8080")
    print("pki: %d files in %s (%.1fs)" % (len(man["files"]), pki, time.monotonic() - t0))
    P = lambda n: os.path.join(pki, n)  # noqa: E731
    lists, cases_dir = os.path.join(base, "lists"), os.path.join(base, "cases")
    os.makedirs(cases_dir)
    write_bytes(os.path.join(lists, "list-2026.xml"), make_list())
    write_bytes(os.path.join(lists, "list-2024.xml"), make_list(layout="2024"))
    unsigned = os.path.join(lists, "list-2026.xml")

    now = utcnow()
    # Each case: name, file, DRIMbox expectation, why xmlsec1 cannot judge it (None: it can),
    # CRLs to embed, extra trusted certs.
    cases = []
    good_file = os.path.join(cases_dir, "good.xml")
    chain = [P("intermediate.pem"), P("root.pem")]
    crls = ("intermediate.crl", "root.crl")
    stale = ("intermediate-stale.crl", "root.crl")

    def signed(name, signer="good", expect=None, na=None, crl=(), src=unsigned, certs=None, **kw):
        s = man["signers"][signer]
        f = os.path.join(cases_dir, name + ".xml")
        sign(src, f, P(s["key"]), P(s["cert"]),
             [P(c) for c in s["chain"]] if certs is None else certs, **kw)
        cases.append((name, f, expect or s["expect"], na, crl))

    signed("good")
    # The 2024 layout carries the signer only; the intermediate then comes from --untrusted-pem.
    signed("good-2024", src=os.path.join(lists, "list-2024.xml"), certs=[],
           mime_type="application/octet-stream")
    signed("enveloped-transform", transform="enveloped")
    signed("c14n-inclusive", expect="accept", c14n="inclusive")
    signed("rsa-sha1", expect="reject", na="algorithm allow-list", signature_method="rsa-sha1")
    signed("rsa-md5", expect="reject", na="algorithm allow-list", signature_method="rsa-md5")
    signed("digest-sha1", expect="reject", na="algorithm allow-list", digest="sha1")
    signed("sigcert-mismatch", expect="reject", na="SigningCertificateV2 not checked",
           signing_certificate_of=P("proof.pem"))
    signed("signing-time-outside", expect="reject", na="SigningTime not checked",
           signing_time=iso(now - dt.timedelta(days=3)))
    f = os.path.join(cases_dir, "key-mismatch.xml")
    sign(unsigned, f, P("proof.key"), P("signer.pem"), chain, allow_key_mismatch=True)
    cases.append(("key-mismatch", f, "reject", None, ()))
    for v in ("expired", "notyet", "selfsigned", "otherca"):
        signed(v, v)
    signed("wrongcn", "wrongcn", na="CN not checked")
    signed("wrongou", "wrongou", na="OU not checked")
    signed("nokeyusage", "nokeyusage", na="key usage not checked")
    signed("proof-signer", "proof", na="CN/OU not checked")
    signed("revoked-no-crl", "revoked", na="no CRL given")
    signed("good+crl", crl=crls)
    signed("revoked+crl", "revoked", crl=crls)
    signed("revoked-intermediate+crl", "revoked-intermediate", crl=crls)
    signed("good+stale-crl", expect="reject", na="CRL nextUpdate not checked", crl=stale)
    signed("revoked+stale-crl", "revoked", na="CRL nextUpdate not checked", crl=stale)

    na_tamper = {"wrapping": "it checks the signature, not what the app reads",
                 "huge": "no size limit"}
    for how in TAMPERS:
        f = os.path.join(cases_dir, "tamper-%s.xml" % how)
        tamper(good_file, f, how)
        cases.append(("tamper-" + how, f, "reject", na_tamper.get(how), ()))

    rows, bad = [], 0
    for name, f, expect, na, crl in cases:
        target, trusted = f, ["root.pem"]
        if crl:
            target = f[:-4] + ".with-crl.xml"
            embed_crls(f, target, [P(c) for c in crl])
            # xmlsec1 drops the whole verification when a CRL's issuer is not a trusted cert.
            trusted.append("intermediate.pem")
        verdict = xmlsec_verify(pki, target, trusted=trusted)
        ok = verdict.startswith("OK")
        if na:
            check = "n/a for xmlsec1 (%s)" % na
        elif ok == (expect == "accept"):
            check = "agree"
        else:
            check = "DISAGREE"
            bad += 1
        rows.append((name, expect, verdict, check))

    w = [max(len(r[i]) for r in rows + [("case", "expected", "xmlsec1 verdict", "")]) for i in range(3)]
    print("\n%-*s  %-*s  %-*s  %s" % (w[0], "case", w[1], "expected", w[2], "xmlsec1 verdict", "check"))
    for r in rows:
        print("%-*s  %-*s  %-*s  %s" % (w[0], r[0], w[1], r[1], w[2], r[2], r[3]))

    # Two independent tools must agree on Reference 1: xmllint's exc-c14n of the unsigned list is
    # exactly the filter2 node-set, so its SHA-256 is the DigestValue xmlsec1 put in good.xml.
    c14n = run(["xmllint", "--exc-c14n", unsigned]).stdout
    good_digest = re.search(rb'URI=""><ds:Transforms>.*?<ds:DigestValue>([^<]+)<', read_input(
        good_file, "good"), re.S).group(1).decode()
    mine = base64.b64encode(hashlib.sha256(c14n).digest()).decode()
    same = mine == good_digest
    print("\nxmllint --exc-c14n %s: %d bytes, sha256 %s; Reference 1 DigestValue %s: %s"
          % (os.path.relpath(unsigned, base), len(c14n), mine, good_digest,
             "match" if same else "MISMATCH"))
    c14n_signed = run(["xmllint", "--exc-c14n", good_file]).stdout
    print("xmllint --exc-c14n %s: %d bytes" % (os.path.relpath(good_file, base), len(c14n_signed)))
    if not same:
        bad += 1
    print("selftest: %d case(s), %d disagreement(s), %.1fs" % (len(rows), bad, time.monotonic() - t0))
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="whitelist.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pki", help="mint the look-alike IGC-Sante TEST PKI into DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--crl-base", default="http://crl.invalid", metavar="URL",
                   help="CRL distribution points become URL/<ca>.crl (default %(default)s)")
    p.add_argument("--key-bits", type=int, default=2048, choices=[2048, 3072, 4096])
    p = sub.add_parser("list", help="write an unsigned whitelist")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--domains", type=int, default=17, metavar="N")
    p.add_argument("--generated", metavar="ISO", help="DateDeGeneration (default: now, UTC)")
    p.add_argument("--layout", choices=["2026", "2024"], default="2026")
    p = sub.add_parser("sign", help="XAdES-BASELINE-B enveloped signature with xmlsec1")
    p.add_argument("inp", metavar="IN")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--key", required=True, metavar="K")
    p.add_argument("--cert", required=True, metavar="C")
    p.add_argument("--chain", nargs="+", action="extend", default=[], metavar="CERT",
                   help="certificates after the signer in X509Data (2026 list: intermediate root)")
    p.add_argument("--c14n", choices=sorted(C14N), default="exc")
    p.add_argument("--transform", choices=["filter2", "enveloped"], default="filter2")
    p.add_argument("--signature-method", choices=list(SIGNATURE_METHODS), default="rsa-sha256")
    p.add_argument("--digest", choices=list(DIGESTS), default="sha256")
    p.add_argument("--signing-time", metavar="ISO", help="xades:SigningTime (default: now, UTC)")
    p.add_argument("--signing-certificate-of", metavar="CERT",
                   help="certificate whose digest/issuer-serial go in SigningCertificateV2 "
                        "(default: --cert)")
    p.add_argument("--mime-type", default="text/xml",
                   help="DataObjectFormat MimeType (2024 list: application/octet-stream)")
    p.add_argument("--allow-key-mismatch", action="store_true",
                   help="sign even if --key is not the key of --cert")
    p = sub.add_parser("tamper", help="derive a broken or hostile variant of a signed list")
    p.add_argument("inp", metavar="IN")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--how", required=True, choices=TAMPERS, metavar="H",
                   help="one of: " + ", ".join(TAMPERS))
    p.add_argument("--size-mb", type=int, default=100, help="target size for --how huge (MiB)")
    p = sub.add_parser("selftest", help="end-to-end run against xmlsec1 in DIR")
    p.add_argument("dir", metavar="DIR")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pki":
            man = mint_pki(a.dir, a.crl_base, a.key_bits)
            print("wrote %d files to %s (see manifest.json)" % (len(man["files"]), a.dir))
        elif a.cmd == "list":
            write_bytes(a.out, make_list(a.domains, a.generated, a.layout))
        elif a.cmd == "sign":
            sign(a.inp, a.out, a.key, a.cert, a.chain, a.c14n, a.transform, a.signature_method,
                 a.digest, a.signing_time, a.signing_certificate_of, a.mime_type,
                 a.allow_key_mismatch)
        elif a.cmd == "tamper":
            tamper(a.inp, a.out, a.how, a.size_mb)
        elif a.cmd == "selftest":
            return selftest(a.dir)
    except UsageError as e:
        print("whitelist.py %s: %s" % (a.cmd, e), file=sys.stderr)
        return 2
    except ToolError as e:
        print("whitelist.py %s: %s" % (a.cmd, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
