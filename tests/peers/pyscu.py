#!/usr/bin/env python3
"""pynetdicom/pydicom peer for the integration tests: a real second DICOM implementation.

Subcommands
  echo PORT --msg-id N             C-ECHO with a chosen Message ID; prints the responded ID
  send PORT FILE... [--ack-log F]  C-STORE each file as-is (pynetdicom sends a path's bytes
                                   without re-encoding); prints "<status hex> <sop uid>" per
                                   file; with --ack-log, appends and fsyncs the SOP UID of
                                   every 0000 before sending the next file
  hold PORT SECONDS                associate, stay silent, then release; prints the outcome
  rejection OUT CODE FILE...       write an IOCM rejection note (KOS) referencing FILEs
  bad OUT KIND SRC                 write a broken variant of SRC: KIND = nostudy | mismatch
  big OUT MIB                      write one CT instance of about MIB MiB (pixel data)
"""
import os
import sys
import time

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

AET = "DRIMBOX"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
CT = "1.2.840.10008.5.1.4.1.1.2"


def ae():
    from pynetdicom import AE, _config
    # Send a file's data set bytes as they are on disk (no decode/re-encode), with the
    # command's UIDs taken from its file meta: what a PACS forwarding files does.
    _config.STORE_SEND_CHUNKED_DATASET = True
    a = AE(ae_title="PYSCU")
    a.acse_timeout = 30
    a.dimse_timeout = 120
    a.network_timeout = 120
    return a


def cmd_echo(port, msg_id):
    from pynetdicom.sop_class import Verification
    a = ae()
    a.add_requested_context(Verification)
    assoc = a.associate("127.0.0.1", int(port), ae_title=AET)
    if not assoc.is_established:
        print("not-established")
        return 2
    st = assoc.send_c_echo(msg_id=int(msg_id))
    assoc.release()
    # pynetdicom validates that the response matches the request's Message ID; report it
    print(int(st.Status) if st else "no-response")
    return 0 if st and st.Status == 0 else 1


def contexts_for(paths):
    seen = {}
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        seen.setdefault(str(ds.file_meta.MediaStorageSOPClassUID), set()).add(
            str(ds.file_meta.TransferSyntaxUID))
    return seen


def cmd_send(port, paths, ack_log=None):
    a = ae()
    for cls, tss in contexts_for(paths).items():
        for ts in tss:
            a.add_requested_context(cls, [ts])
    log = open(ack_log, "a") if ack_log else None
    failures = 0
    assoc = None
    for p in paths:
        if assoc is None or not assoc.is_established:
            assoc = a.associate("127.0.0.1", int(port), ae_title=AET)
            if not assoc.is_established:
                print("ASSOC-FAILED", p, flush=True)
                failures += 1
                assoc = None
                time.sleep(0.2)
                continue
        sop = str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        try:
            st = assoc.send_c_store(p)
        except Exception as e:  # connection dropped mid-store
            print("ERROR", sop, e, flush=True)
            failures += 1
            assoc = None
            continue
        if not st or "Status" not in st:
            print("NO-RESPONSE", sop, flush=True)
            failures += 1
            assoc = None
            continue
        code = int(st.Status)
        print("%04X %s" % (code, sop), flush=True)
        if code == 0 and log:
            log.write(sop + "\n")
            log.flush()
            os.fsync(log.fileno())
        if code != 0:
            failures += 1
    if assoc is not None and assoc.is_established:
        assoc.release()
    return 0 if failures == 0 else 1


def cmd_hold(port, seconds):
    from pynetdicom.sop_class import Verification
    a = ae()
    a.add_requested_context(Verification)
    assoc = a.associate("127.0.0.1", int(port), ae_title=AET)
    print("established" if assoc.is_established else "rejected", flush=True)
    time.sleep(float(seconds))
    if assoc.is_established:
        assoc.release()
    return 0


def cmd_rejection(out, code, files):
    refs = [dcmread(f, stop_before_pixels=True) for f in files]
    study = refs[0].StudyInstanceUID
    ds = Dataset()
    ds.SOPClassUID = KOS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.PatientID = refs[0].get("PatientID", "")
    ds.PatientName = refs[0].get("PatientName", "")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = [title]
    by_series = {}
    for r in refs:
        by_series.setdefault(r.SeriesInstanceUID, []).append(r)
    st = Dataset()
    st.StudyInstanceUID = study
    st.ReferencedSeriesSequence = []
    for se_uid, items in by_series.items():
        se = Dataset()
        se.SeriesInstanceUID = se_uid
        se.ReferencedSOPSequence = []
        for r in items:
            it = Dataset()
            it.ReferencedSOPClassUID = r.SOPClassUID
            it.ReferencedSOPInstanceUID = r.SOPInstanceUID
            se.ReferencedSOPSequence.append(it)
        st.ReferencedSeriesSequence.append(se)
    ds.CurrentRequestedProcedureEvidenceSequence = [st]
    save(ds, out)
    print(ds.SOPInstanceUID)
    return 0


def save(ds, out, ts=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)


def cmd_bad(out, kind, src):
    ds = dcmread(src)
    if kind == "nostudy":
        del ds.StudyInstanceUID
        ds.SOPInstanceUID = generate_uid()
        save(ds, out, ds.file_meta.TransferSyntaxUID)
    elif kind == "mismatch":
        # pynetdicom takes the command's UIDs from the file meta: make them disagree
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        # enforce_file_format would realign the meta with the data set: write it as it is
        ds.save_as(out, enforce_file_format=False)
    else:
        raise SystemExit("unknown kind " + kind)
    return 0


def cmd_big(out, mib):
    import numpy as np
    cols = 4096
    rows = max(1, int(mib) * 1024 * 1024 // (cols * 2))
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "BIG"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(7)
    ds.PixelData = rng.integers(0, 65535, size=rows * cols, dtype=np.uint16).tobytes()
    save(ds, out)
    print(ds.SOPInstanceUID)
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "echo":
        return cmd_echo(args[0], args[args.index("--msg-id") + 1])
    if cmd == "send":
        ack = None
        if "--ack-log" in args:
            i = args.index("--ack-log")
            ack = args[i + 1]
            args = args[:i] + args[i + 2:]
        return cmd_send(args[0], args[1:], ack)
    if cmd == "hold":
        return cmd_hold(args[0], args[1])
    if cmd == "rejection":
        return cmd_rejection(args[0], args[1], args[2:])
    if cmd == "bad":
        return cmd_bad(args[0], args[1], args[2])
    if cmd == "big":
        return cmd_big(args[0], args[1])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
