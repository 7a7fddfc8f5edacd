#!/usr/bin/env python3
"""A consumer DRIMbox's retrieve with dicomweb-client (PyPI), the DICOMweb client of the
field, over mutual TLS.

    dicomweb.py --url BASE --ca CA --cert CERT --key KEY --kos UID --token T \\
                --study ST --series SE --out DIR

Retrieves the series with the client's default media type (no transfer syntax named) and the
study with ("application/dicom", "*"); writes every instance to DIR/<mode>-<SOP>.dcm and prints
one JSON object: {"series": [[sop, ts], ...], "study": [[sop, ts], ...]}.
"""
import argparse
import json
import os

import requests
from dicomweb_client.api import DICOMwebClient


def main():
    p = argparse.ArgumentParser()
    for a in ("--url", "--ca", "--cert", "--key", "--kos", "--token", "--study", "--series", "--out"):
        p.add_argument(a, required=True)
    a = p.parse_args()
    session = requests.Session()
    # REQUESTS_CA_BUNDLE and proxy variables of the environment must not replace the test CA.
    session.trust_env = False
    session.verify = a.ca
    session.cert = (a.cert, a.key)
    client = DICOMwebClient(
        url=a.url,
        session=session,
        headers={"KOS-SOPInstanceUID": a.kos, "Authorization": "Bearer " + a.token},
    )
    out = {}
    for mode, datasets in (
        ("series", client.retrieve_series(a.study, a.series)),
        ("study", client.retrieve_study(a.study, media_types=(("application/dicom", "*"),))),
    ):
        seen = []
        for ds in datasets:
            sop = str(ds.SOPInstanceUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
            ds.save_as(os.path.join(a.out, "%s-%s.dcm" % (mode, sop)), enforce_file_format=True)
            seen.append([sop, ts])
        out[mode] = seen
    print(json.dumps(out))


if __name__ == "__main__":
    main()
