"""What each emulator profile must look like, written down from the kernel sources.

tdx: drivers/virt/coco/tdx-guest/tdx-guest.c (Linux 6.16); sample:
samples/tsm-mr/tsm_mr_sample.c; tpm: TPM 2.0 PC Client PCR attributes as seen
from locality 0; cca: RIM + REM0-3.  (register, bank, size, flags)
"""

RW = ("readable", "writable", "live")

EXPECTED: dict[str, list[tuple[str, str, int, tuple[str, ...]]]] = {
    "tdx": [
        ("mrtd", "sha384", 48, ("readable",)),
        ("mrconfigid", "raw", 48, ("readable", "nohash")),
        ("mrowner", "raw", 48, ("readable", "nohash")),
        ("mrownerconfig", "raw", 48, ("readable", "nohash")),
    ]
    + [(f"rtmr{i}", "sha384", 48, RW) for i in range(4)],
    "sample": [
        ("static_mr", "sha384", 48, ("readable",)),
        ("config_mr", "raw", 64, ("readable", "nohash")),
        ("rtmr0", "sha256", 32, ("readable", "live")),
        ("rtmr1", "sha384", 48, RW),
        ("rtmr_crypto_agile", "sha256", 32, RW),
        ("rtmr_crypto_agile", "sha384", 48, RW),
        ("report_digest", "sha512", 64, ("readable", "live")),
    ],
    "cca": [("rim", "sha256", 32, ("readable",))] + [(f"rem{i}", "sha256", 32, RW) for i in range(4)],
    "tpm": [
        (f"pcr{p}", alg, size, ("readable", "live") if 17 <= p <= 22 else RW)
        for p in range(24)
        for alg, size in (("sha1", 20), ("sha256", 32), ("sha384", 48))
    ],
}

SAMPLE_INITIAL_REPORT_DIGEST = (
    "106d079f9954b62443dc0595906460dba92ce1398aeeb6430e27ac5704322307"
    "cdd16d1512d7cbae214c99ff484f7bb5d8bb267d1f4f4d5cd75f4f77fe3d63cf"
)
SAMPLE_RTMR1_AFTER_ZERO = (
    "5981610c834136299064ad2ed2d42ceb3f9a8bfb902d9e82842bb3e9c9e049b0"
    "5635ad21b5f6fec9c1acb962ec4cbce2"
)
SAMPLE_REPORT_DIGEST_AFTER_ZERO = (
    "44fb67b49be39f593ac9425196c06fd7bc87fe3e5b738698937e16015752e04e"
    "35b5ff0111be2d3af1eec8f6d4c8196bad44bbd8b8852e52a7c56cffb887b803"
)
