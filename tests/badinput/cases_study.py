"""Corpus cases about the study folder and its headers: stray files, odd series layouts,
character sets, huge values, classification edge cases."""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tests.badinput.expect import CaseExpect
from tests.badinput.expect_helpers import ok, registry, rejected
from tests.badinput.writers import Study, dicomdir_dataset, jpeg_bytes, save, uid
from tests.dicom_factory import AXIAL, CORONAL, SAGITTAL

CASES, case = registry()


@case("a clean 12-slice axial T2 series: the control")
def baseline_axial(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    return CaseExpect([ok(s, sequence_type="T2")])


@case("a zero-byte file among the images")
def zero_byte_file(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    st.write_bytes("IM_EMPTY", b"")
    return CaseExpect([ok(s)], unattributed="unreadable_file")


@case("a DICOMDIR in the study folder (not an image of any study)")
def dicomdir_in_folder(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    save(dicomdir_dataset(), st.folder / "DICOMDIR")
    return CaseExpect([ok(s)])


@case("a text file among the images")
def text_file_among_images(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    st.write_bytes("README.TXT", "exported by PACS viewer\nnothing to see\n".encode() * 20)
    return CaseExpect([ok(s)], unattributed="unreadable_file")


@case("a JPEG screenshot without extension among the images")
def jpeg_among_images(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    st.write_bytes("IM9999", jpeg_bytes())
    return CaseExpect([ok(s)], unattributed="unreadable_file")


@case("a file cut inside its header (300 bytes kept) next to a good series")
def truncated_header(st: Study) -> CaseExpect:
    s, paths = st.series("a")
    _, cut = st.series("b", n=1, start=50)
    cut[0].write_bytes(cut[0].read_bytes()[:300])
    return CaseExpect([ok(s)], unattributed="unreadable_file")


@case("one series split across two sub-folders")
def split_across_folders(st: Study) -> CaseExpect:
    s, _ = st.series("a", n=6, sub="part1")
    st.series("a", n=6, sub="part2", start=6, positions=[18.0 + 3.0 * k for k in range(6)])
    return CaseExpect([ok(s, n=12)])


@case("two series of one study share SeriesNumber 3")
def shared_series_number(st: Study) -> CaseExpect:
    a, _ = st.series("a", number=3)
    b, _ = st.series("b", number=3, iop=SAGITTAL, description="PD SAG")
    return CaseExpect([ok(a), ok(b, orientation="sagittal", sequence_type="PD")])


@case("multi-echo: EchoNumbers 1/2 at the same positions, same AcquisitionTime, interleaved numbering")
def multi_echo(st: Study) -> CaseExpect:
    def echo(ds, k):
        ds.EchoNumbers = 1 + k % 2
        ds.EchoTime = 12.0 if k % 2 == 0 else 80.0
        ds.AcquisitionTime = "101500.000000"
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") + 40 * (k % 2)).astype("<u2").tobytes()
    positions = [3.0 * (k // 2) for k in range(20)]
    s, _ = st.series("a", positions=positions, mutate=echo, description="DUAL ECHO AX")
    return CaseExpect([ok(s, n=10, n_timepoints=2)])


@case("an ADC map: DERIVED\\PRIMARY\\ADC, kept as a clinically read contrast")
def adc_map(st: Study) -> CaseExpect:
    s, _ = st.series("a", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), description="AX ADC")
    return CaseExpect([ok(s, sequence_type="ADC")])


@case("an MPR reformat: DERIVED\\SECONDARY\\MPR")
def mpr_reformat(st: Study) -> CaseExpect:
    s, _ = st.series("a", image_type=("DERIVED", "SECONDARY", "MPR"), description="COR MPR")
    return CaseExpect([rejected(s, "derived_series")])


@case("a single-slice series")
def single_slice(st: Study) -> CaseExpect:
    s, _ = st.series("a", n=1)
    return CaseExpect([rejected(s, "too_few_slices")])


@case("a 3-plane localizer without the LOCALIZER flag: 3 images per plane")
def three_plane_localizer(st: Study) -> CaseExpect:
    s = uid(st.name, "series", "loc")

    def plane(iop):
        def mutate(ds, k):
            ds.SeriesInstanceUID = s
            ds.SeriesDescription = "3 PLANE LOC"
        return mutate
    for tag, iop, start in (("ax", AXIAL, 0), ("sag", SAGITTAL, 3), ("cor", CORONAL, 6)):
        st.series(tag, n=3, iop=iop, step=10.0, start=start, mutate=plane(iop))
    return CaseExpect([rejected(s, "localizer_series")])


@case("a Basic Text SR in the study next to an image series")
def sr_in_study(st: Study) -> CaseExpect:
    s, _ = st.series("a")
    return CaseExpect([ok(s), rejected(_write_sr(st), "non_image_object", stage="deid")])


def _write_sr(st: Study) -> str:
    """A Basic Text SR (no pixels) in its own series; returns its SeriesInstanceUID."""
    sr = Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = pydicom.uid.BasicTextSRStorage
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = uid(st.name, "sr-sop")
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SeriesInstanceUID, sr.Modality, sr.InstanceNumber = uid(st.name, "sr"), "SR", 1
    sr.ValueType, sr.ContentSequence = "CONTAINER", []
    save(st.header(sr), st.folder / "SR0001.dcm")
    return sr.SeriesInstanceUID


@case("UTF-8 (ISO_IR 192) names and an emoji in SeriesDescription")
def charset_utf8_emoji(st: Study) -> CaseExpect:
    def utf8(ds, k):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "王^小明=ワン^ショウメイ"
        ds.SeriesDescription = "T2 AX 🧠 Ünïcødé"
        ds.InstitutionName = "Klinikum Düsseldorf 🏥"
    s, _ = st.series("a", mutate=utf8)
    return CaseExpect([ok(s)])


@case("Japanese ISO 2022 IR 87 (JIS X 0208 via escape sequences) person names")
def charset_iso2022_ir87(st: Study) -> CaseExpect:
    def jis(ds, k):
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        ds.SeriesDescription = "T2 AX 膝"
    s, _ = st.series("a", mutate=jis)
    return CaseExpect([ok(s)])


@case("Latin-1 (ISO_IR 100) names and descriptions")
def charset_latin1(st: Study) -> CaseExpect:
    def latin1(ds, k):
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen^Ångström"
        ds.SeriesDescription = "T2 AX Genou Éq"
    s, _ = st.series("a", mutate=latin1)
    return CaseExpect([ok(s)])


@case("an unknown SpecificCharacterSet value (decoded as best pydicom can)")
def charset_unknown(st: Study) -> CaseExpect:
    def bogus(ds, k):
        ds.SpecificCharacterSet = "ISO_IR 999"
    s, _ = st.series("a", mutate=bogus)
    return CaseExpect([ok(s)])


@case("private tags with huge values (1 MiB OB, 256 KiB UT) on some images")
def private_tags_huge(st: Study) -> CaseExpect:
    def private(ds, k):
        if k < 3:
            block = ds.private_block(0x0029, "ACME HUGE", create=True)
            block.add_new(0x01, "OB", bytes(range(256)) * 4096)
            block.add_new(0x02, "UT", "Badinput^Case private note " * 10000)
    s, _ = st.series("a", mutate=private)
    return CaseExpect([ok(s)])


@case("an extremely long PatientName (10,000 characters) and ReferringPhysicianName")
def long_patient_name(st: Study) -> CaseExpect:
    def long(ds, k):
        ds.PatientName = "Verylong^" + "N" * 10000
        ds.ReferringPhysicianName = "Dr^" + "R" * 5000
    s, _ = st.series("a", mutate=long)
    return CaseExpect([ok(s)])


@case("BurnedInAnnotation YES on one series next to a clean one")
def burned_in_next_to_clean(st: Study) -> CaseExpect:
    a, _ = st.series("a")
    b, _ = st.series("b", extra={"BurnedInAnnotation": "YES"}, description="SCREEN SAVE")
    return CaseExpect([ok(a), rejected(b, "burned_in_annotation", stage="deid")])


@case("a study whose only series has BurnedInAnnotation YES (deid writes nothing)")
def burned_in_only(st: Study) -> CaseExpect:
    s, _ = st.series("a", extra={"BurnedInAnnotation": "YES"})
    return CaseExpect([rejected(s, "burned_in_annotation", stage="deid")])


@case("a study holding only an SR (no image series at all)")
def sr_only_study(st: Study) -> CaseExpect:
    return CaseExpect([rejected(_write_sr(st), "non_image_object", stage="deid")])


@case("a huge slice count: 500 tiny 8x8 slices 0.5 mm apart (one file each)")
def huge_slice_count(st: Study) -> CaseExpect:
    # 500, not 1000: per-file cost (~8 ms deid, ~6 ms convert) would double the suite's time
    s, _ = st.series("a", n=500, rows=8, cols=8, step=0.5)
    return CaseExpect([ok(s, n=500)])
