// SPDX-License-Identifier: MIT
// Decoding the vSMMU's ID registers (GET_HW_INFO, PROTOCOL.md §5.12). Field positions: SMMUv3
// architecture (ARM IHI 0070), as the Linux driver reads them in arm_smmu_device_hw_probe
// (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c, masks in arm-smmu-v3.h).

#include "hw_info.h"

/* Bits [hi:lo] of `reg`. */
static unsigned field(uint32_t reg, unsigned hi, unsigned lo)
{
	return (unsigned)((reg >> lo) & ((1u << (hi - lo + 1)) - 1));
}

static int bit(uint32_t reg, unsigned n)
{
	return (int)((reg >> n) & 1);
}

/* IDR5.OAS → output address bits (arm_smmu_device_hw_probe's IDR5_OAS_* switch); 0 for 0b111 (reserved). */
static unsigned oas_bits(unsigned oas)
{
	static const unsigned bits[] = { 32, 36, 40, 42, 44, 48, 52 };
	return oas < sizeof(bits) / sizeof(bits[0]) ? bits[oas] : 0;
}

void vmm_hw_decode(const struct vsmmu_hw_info_reply *reply, struct vmm_hw_features *out)
{
	uint32_t idr0 = reply->idr[0], idr1 = reply->idr[1], idr3 = reply->idr[3], idr5 = reply->idr[5];
	out->sid_bits = field(idr1, 5, 0);
	out->ssid_bits = field(idr1, 10, 6);
	out->evtq_log2 = field(idr1, 20, 16);
	out->cmdq_log2 = field(idr1, 25, 21);
	out->oas_field = field(idr5, 2, 0);
	out->oas_bits = oas_bits(out->oas_field);
	out->gran4k = bit(idr5, 4);
	out->gran16k = bit(idr5, 5);
	out->gran64k = bit(idr5, 6);
	out->ril = bit(idr3, 10);
	out->s2p = bit(idr0, 0);
	out->s1p = bit(idr0, 1);
	out->btm = bit(idr0, 5);
	out->httu = field(idr0, 7, 6);
	out->ats = bit(idr0, 10);
	out->asid16 = bit(idr0, 12);
	out->msi = bit(idr0, 13);
	out->pri = bit(idr0, 16);
	out->vmid16 = bit(idr0, 18);
	out->stall_model = field(idr0, 25, 24);
	out->st_level = field(idr0, 28, 27);
	out->arch_major = field(reply->aidr, 7, 4);
	out->arch_minor = field(reply->aidr, 3, 0);
	out->implementer = field(reply->iidr, 11, 0);
	out->revision = field(reply->iidr, 15, 12);
	out->variant = field(reply->iidr, 19, 16);
	out->product = field(reply->iidr, 31, 20);
}

const char *vmm_hw_stall_model_name(unsigned stall_model)
{
	switch (stall_model) {
	case 0: return "stall and terminate";
	case 1: return "terminate only";
	case 2: return "stall forced";
	default: return "reserved";
	}
}

static const char *yes_no(int flag)
{
	return flag ? "yes" : "no";
}

void vmm_hw_print(FILE *out, const struct vsmmu_hw_info_reply *reply)
{
	struct vmm_hw_features f;
	vmm_hw_decode(reply, &f);
	fprintf(out, "vmm-sim: guest ID registers (GET_HW_INFO over %u viommu%s):", reply->viommu_count,
		reply->viommu_count == 1 ? "" : "s");
	for (int i = 0; i < 6; i++)
		fprintf(out, " IDR%d 0x%08x", i, reply->idr[i]);
	fprintf(out, " IIDR 0x%08x AIDR 0x%08x\n", reply->iidr, reply->aidr);
	fprintf(out, "vmm-sim:   SIDSIZE %u, SSIDSIZE %u, OAS %u bits (IDR5.OAS %u), granules%s%s%s%s, RIL %s, BTM %s, "
		"ATS %s, PRI %s, MSI %s, ASID16 %s, VMID16 %s, stage1 %s, stage2 %s, HTTU %u, stall model %s (%u), "
		"%s stream table, CMDQS %u, EVTQS %u\n",
		f.sid_bits, f.ssid_bits, f.oas_bits, f.oas_field, f.gran4k ? " 4K" : "", f.gran16k ? " 16K" : "",
		f.gran64k ? " 64K" : "", f.gran4k || f.gran16k || f.gran64k ? "" : " none", yes_no(f.ril), yes_no(f.btm),
		yes_no(f.ats), yes_no(f.pri), yes_no(f.msi), yes_no(f.asid16), yes_no(f.vmid16), yes_no(f.s1p),
		yes_no(f.s2p), f.httu, vmm_hw_stall_model_name(f.stall_model), f.stall_model,
		f.st_level == 1 ? "2-level" : f.st_level == 0 ? "linear" : "reserved-level", f.cmdq_log2, f.evtq_log2);
	if (f.arch_major == 0)
		fprintf(out, "vmm-sim:   architecture SMMUv3.%u", f.arch_minor);
	else
		fprintf(out, "vmm-sim:   architecture AIDR %u.%u", f.arch_major, f.arch_minor);
	fprintf(out, ", implementer 0x%03x, product 0x%03x, variant %u, revision %u\n", f.implementer, f.product,
		f.variant, f.revision);
}
