#!/usr/bin/env python3
"""The peer of `drimbox bench-lot`: the same work done with the field's tools.

Builds the same KOS as drimbox (Key Object Selection, TID 2010, N references in S series with a
Retrieve URL each, Implicit VR Little Endian) with pydicom, hashes it, and signs an IHE DSG lot
signature template of the same shape with `xmlsec1 --sign` (the PKCS#12 given), i.e. what a
Python/xmlsec implementation of the box would do. Prints the median in milliseconds as JSON.

usage: bench-lot-peer.py P12 PASSWORD INSTANCES SERIES REPS
"""
import base64
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

STUDY = "1.2.250.1.213.4.5.2.1.112"

TEMPLATE = """<?xml version="1.0"?>
<Signature xmlns="http://www.w3.org/2000/09/xmldsig#" Id="SIG"><SignedInfo><CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"/><SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><Reference Type="http://www.w3.org/2000/09/xmldsig#Manifest" URI="#IHEManifest"><DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><DigestValue/></Reference><Reference Type="http://uri.etsi.org/01903/v1.1.1#SignedProperties" URI="#S0-SignedProperties"><DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><DigestValue/></Reference></SignedInfo><SignatureValue/><KeyInfo><X509Data/></KeyInfo><Object><SignatureProperties><SignatureProperty Id="purposeOfSignature" Target="#SIG">1.2.840.10065.1.12.1.14</SignatureProperty></SignatureProperties></Object><Object><Manifest Id="IHEManifest"><Reference URI="urn:oid:1.2.250.1.999.3.1"><DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><DigestValue>AA==</DigestValue></Reference><Reference URI="urn:oid:1.2.250.1.999.1.1"><DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><DigestValue>{kos}</DigestValue></Reference></Manifest></Object><Object><QualifyingProperties xmlns="http://uri.etsi.org/01903/v1.1.1#" Target="#SIG"><SignedProperties Id="S0-SignedProperties"><SignedSignatureProperties><SigningTime>2024-01-02T04:04:05+01:00</SigningTime><SignaturePolicyIdentifier><SignaturePolicyImplied/></SignaturePolicyIdentifier></SignedSignatureProperties><SignedDataObjectProperties/></SignedProperties></QualifyingProperties></Object></Signature>
"""


def code(value, scheme, meaning):
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def build_kos(instances, series):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"
    ds.SOPInstanceUID = "1.2.250.1.999.1.1"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = "1.2.250.1.999.2.1"
    ds.Modality = "KO"
    ds.PatientName = "PAT-TROIS^DOMINIQUE"
    ds.PatientID = "279035121518989"
    ds.AccessionNumber = "ACN112"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("113030", "DCM", "Manifest")])
    ds.ContinuityOfContent = "SEPARATE"
    t = Dataset()
    t.MappingResource, t.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([t])
    refs, content = [], []
    per = [instances // series + (1 if s < instances % series else 0) for s in range(series)]
    for s, n in enumerate(per):
        se = Dataset()
        se.SeriesInstanceUID = "%s.%d" % (STUDY, s + 1)
        se.RetrieveURL = "https://db.example.fr/wado/studies/%s/series/%s" % (STUDY, se.SeriesInstanceUID)
        sops = []
        for i in range(n):
            r = Dataset()
            r.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            r.ReferencedSOPInstanceUID = "%s.%d.%d" % (STUDY, s + 1, i + 1)
            sops.append(r)
            item = Dataset()
            item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
            item.ReferencedSOPSequence = Sequence([r])
            content.append(item)
        se.ReferencedSOPSequence = Sequence(sops)
        refs.append(se)
    ev = Dataset()
    ev.StudyInstanceUID = STUDY
    ev.ReferencedSeriesSequence = Sequence(refs)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([ev])
    ds.ContentSequence = Sequence(content)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=True, little_endian=True)
    return out.getvalue()


def main():
    p12, password, instances, series, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    times = []
    with tempfile.TemporaryDirectory() as d:
        tpl, signed = os.path.join(d, "t.xml"), os.path.join(d, "s.xml")
        for _ in range(reps):
            t0 = time.perf_counter()
            kos = build_kos(instances, series)
            digest = base64.b64encode(hashlib.sha256(kos).digest()).decode()
            with open(tpl, "w") as f:
                f.write(TEMPLATE.format(kos=digest))
            subprocess.run(
                ["xmlsec1", "--sign", "--ignore-manifests", "--pkcs12", p12, "--pwd", password,
                 "--id-attr:Id", "Manifest", "--id-attr:Id",
                 "http://uri.etsi.org/01903/v1.1.1#:SignedProperties",
                 "--output", signed, tpl], check=True, capture_output=True)
            with open(signed, "rb") as f:
                hashlib.sha1(f.read()).hexdigest()
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"instances": instances, "reps": reps, "kos_bytes": len(kos),
                      "median_ms": round(statistics.median(times), 3)}))


if __name__ == "__main__":
    main()
