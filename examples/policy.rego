# An example appraisal policy: `tsmr appraise bundle.json --policy examples/policy.rego`,
# or `tsmr policy import default examples/policy.rego` for the verifier.
package tsmr

import rego.v1

# Refuse on any error finding (evidence, freshness, replay, reference values, appraisers).
default allow := false

allow if count(input.errors) == 0

# Unlogged extends leave the register matching but part of its content unknown: refuse them here.
deny contains {"id": "no-gaps", "msg": "a register was extended without being logged"} if {
	"replay.gap" in input.warnings
}

# Only these images may be deployed by the application that logs to example.com/app.
allowed_images := {"alpine", "debian"}

deny contains {"id": "image", "msg": sprintf("image %v is not allowed", [e.json.image])} if {
	some e in input.events["example.com/app"]
	e.operation == "deploy"
	not e.json.image in allowed_images
}

# Debuggable guests: the verifier refuses them by itself (evidence.tdx.debug, evidence.snp.policy.debug,
# evidence.cca.debug) unless it runs with --allow-debug; these rules refuse them even then.
# TDX guests must not run with debugging on: bit 0 of TD_ATTRIBUTES (the low nibble of its first byte).
deny contains {"id": "debug", "msg": "the TD is debuggable"} if {
	input.kind == "tdx"
	substring(input.claims.td_attributes, 1, 1) in {"1", "3", "5", "7", "9", "b", "d", "f"}
}

# SEV-SNP guests must not allow debugging: bit 19 of the guest policy the report carries.
deny contains {"id": "snp-debug", "msg": "the SEV-SNP guest policy allows debugging"} if {
	input.kind == "snp"
	bits.and(input.claims.policy, 524288) != 0
}

# CCA platforms must be in the secured lifecycle state (the verifier's claim "debug" says they are not).
deny contains {"id": "cca-debug", "msg": "the CCA platform is not secured"} if {
	input.kind == "cca"
	input.claims.debug == true
}
