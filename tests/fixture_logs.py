"""The real logs of the shared fixtures, by kind (paths relative to TSMR_FIXTURES)."""

TPM_LOGS = [
    "go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin",
    "go-eventlog/eventlogs/tpm/debian-10.bin",
    "go-eventlog/eventlogs/tpm/rhel8-uefi.bin",
    "go-eventlog/eventlogs/tpm/ubuntu-2104-no-secure-boot.bin",
    "go-eventlog/legacydata/short_no_action_eventlog",
    "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin",
]
CCEL_LOGS = [
    "go-eventlog/eventlogs/ccel/CCEL_unpadded.data.bin",
    "go-eventlog/eventlogs/ccel/cos-113-intel-tdx.bin",
    "go-eventlog/eventlogs/ccel/cos-113-intel-tdx-dupe-separator.bin",
    "go-tdx-guest/ccel/ccel_data.dat",
    "trustee/eventlog/CCEL_AAEL_alibabacloud",
    "trustee/eventlog/CCEL_data",
    "trustee/eventlog/CCEL_data_csv",
    "trustee/eventlog/CCEL_data_gcp",
    "trustee/eventlog/CCEL_data_grub",
    "trustee/eventlog/CCEL_data_grub_gke",
    "trustee/eventlog/CCEL_data_ovmf",
]
OTHER_LOGS = [
    "go-tpm-tools/cel/cel.b64",
    "keylime/create-runtime-policy/ima-log-sha256",
    "keylime/create-runtime-policy/ima-log-sha384",
    "trustee/aael/AAEL_data_3",
]
