"""PCR 10 of IMA measurement lists in every bank, as an independent implementation computes them.

How the numbers were computed: keylime 7.14.3 (pip package ``keylime``, in a
throw-away virtual environment; keylime is not a dependency of this project),
``keylime.ima.ima.process_measurement_list(None, lines, hash_alg=Hash.X)`` for
X in SHA1, SHA256, SHA384 and SHA512, ``lines`` being the list's text.  keylime
recomputes each entry's template digest with the bank's algorithm from the
template data it rebuilds from the text (``ast.Entry``: the legacy ``ima``
template with its name padded to 256 bytes, ``ima-ng``, ``ima-sig``,
``ima-buf``), extends a violation (all-zero SHA-1 template hash) as 0xFF bytes
of the bank's size, and folds from the zero value of PCR 10.

The same keylime code gave, for the ASCII list a qemu guest with swtpm wrote
(82 ``ima-sig`` entries), exactly the PCR 10 values that guest's TPM reported
in all four banks.
"""

from __future__ import annotations

from tsmr import HashAlg

S1, S256, S384, S512 = HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512

# Shared fixtures (paths relative to TSMR_FIXTURES): two-line ima-ng lists with SHA-1 template hashes.
KEYLIME_PCR10: dict[str, dict[HashAlg, str]] = {
    "keylime/create-runtime-policy/ima-log-sha256": {
        S1: "8adcb4304b78ee782bbba3733b191591e75dc83d",
        S256: "8dcd5e7eb63e363377ec19b0d358601ccc19f25a30486f35784c5288dbb91d9d",
        S384: "268b34ccd4d8e2b8f388f780c363f1c8048d22353a9c411f886cf76b8a32c9dd40fbe42679fb530dd2a349503b2666f5",
        S512: "163e39f3abf1f06ca678841e53b775bd88379e399ed6c4bfb53ea1e7872f556783903b8139b2564f6e5a45681479ed80e2"
              "a4a1dacffef614e3f28a1df9e7afec",
    },
    # Its first entry is a violation (all-zero template hash): extended as 0xFF bytes in every bank.
    "keylime/create-runtime-policy/ima-log-sha384": {
        S1: "3dfd156753bbf66afbb3c10b98bac02ed13b481c",
        S256: "35771508049511f8d3aef6691b528a1ea2fdcf13839dc0edceec1fa2ffb0737e",
        S384: "e17e1e6a08abfe8c89118a082a56778f16c96082288c57bb386ad9d329ac8980999eeacb7e7aff6a1289f3d2321fbe8e",
        S512: "63f69a11947fa8c42c5599aee13e97b23fe64968dce9270ffcbcc633f38240aa9e72a4785fbe4096e133b18ef4bbf38edbbfb"
              "9362ec74e757226c9bad345b230",
    },
}

# A list written here to cover every template keylime reads: ima-ng (SHA-256 and SHA-1 file digests),
# the legacy ima template, ima-sig with and without a signature, ima-buf, and a violation.
MIXED_LIST = (
    "10 01fb2f8a6d603fd73992768a0d7275c8adb81fda ima-ng "
    "sha256:4509beb0ab401d71fa4a5cd94a55c9a74f13332776ae4019c5bfc4c2005157ff boot_aggregate\n"
    "10 b88df1cc4707e11bb7414082c2651ad94b0983db ima fd62812fbd9ec4c7f99aa4f6253fead2388eb238 /sbin/init\n"
    "10 2b3e790e416a5129950eb061eb628c2baf91f468 ima-ng "
    "sha256:37d2b12d5d9abc2a364ef9448767ee03938e383c0284193477dc7618f4b7c6c2 /usr/bin/bash\n"
    "10 7a3cfb5446b46b6f8623f4dba9aa5c2b4fecabc2 ima-sig "
    "sha256:c7b68ac37f364473e922936708e7f43c293dd07b295171566c07ff5fe024fab9 /usr/bin/ls "
    "030204aabbccdd0040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526272829"
    "2a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\n"
    "10 f4599cc694fb546b29035c5c029e2fed4b547511 ima-sig "
    "sha512:4241b986a49591d445ebb840bc4b49c12b10b392b49222bc45dfd8b871cb3d0e742cdba152aa782e253026c7fc93fe82"
    "87b95c5fd0e22467e99c89501a502cd4 /usr/bin/cat \n"
    "10 0000000000000000000000000000000000000000 ima-ng "
    "sha256:0000000000000000000000000000000000000000000000000000000000000000 /var/log/app.log\n"
    "10 5c0dbddc43ee61a8ea30095d58c25a49141bd65b ima-buf "
    "sha256:b6878810d4fffe7b4ee653997e493fa3426522a1f65f2579f7bd7889df0bae2e kexec-cmdline 6b65726e656c20636d646c696e65\n"
    "10 03606e3268d9eb92f8d522d107c4f5cd1223075b ima-ng sha1:16795633e2c1543064a3ad70ac3ba71d3d589b3b /bin/sh\n"
).encode()

KEYLIME_MIXED_PCR10: dict[HashAlg, str] = {
    S1: "f9166db0f2539d6d3aa90623a60b00ffdcd2d45b",
    S256: "afc673894cc8b4e4cd9741f0cf1662dd19ac4406534fe194b38388f52424003b",
    S384: "5d232f1cfc21aeff13f467e5781347adaa9d76ee656df205b44f924a481b5f55b6a14d8f2a6c3759e046fe1973d6504c",
    S512: "dbc327c2db3eb29089196a5b2994c58a5fb48ca86397314950cd790d42749b542a01084102162a25035b637ea3c8e253f07bbe"
          "ce1617e02e0a63bd3cf5d9abf3",
}
