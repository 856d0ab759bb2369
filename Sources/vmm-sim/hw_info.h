// SPDX-License-Identifier: MIT
// The vSMMU's ID registers as GET_HW_INFO (protocol version 2) answers them, decoded the way a VMM reads
// them to build the guest's SMMU_IDR0-5, SMMU_IIDR and SMMU_AIDR.
#ifndef VMM_SIM_HW_INFO_H
#define VMM_SIM_HW_INFO_H

#include <stdint.h>
#include <stdio.h>

#include "vsmmu_client.h"

/* The key fields of the ID registers (SMMUv3 architecture, ARM IHI 0070; the bit positions are those of
 * the Linux driver's arm-smmu-v3.h, IDR0_* / IDR1_* / IDR3_* / IDR5_* / IIDR_*). */
struct vmm_hw_features {
	unsigned sid_bits;       /* IDR1.SIDSIZE [5:0]: StreamID bits */
	unsigned ssid_bits;      /* IDR1.SSIDSIZE [10:6]: SubstreamID bits (0: no substreams) */
	unsigned cmdq_log2;      /* IDR1.CMDQS [25:21]: log2 of the largest command queue */
	unsigned evtq_log2;      /* IDR1.EVTQS [20:16]: log2 of the largest event queue */
	unsigned oas_bits;       /* IDR5.OAS [2:0] decoded (32 … 52), 0 for a reserved encoding */
	unsigned oas_field;      /* IDR5.OAS as encoded */
	int gran4k, gran16k, gran64k; /* IDR5 bits 4, 5, 6 */
	int ril;                 /* IDR3.RIL (bit 10): range invalidation */
	int btm;                 /* IDR0.BTM (bit 5): broadcast TLB maintenance */
	int ats;                 /* IDR0.ATS (bit 10) */
	int pri;                 /* IDR0.PRI (bit 16) */
	int msi;                 /* IDR0.MSI (bit 13) */
	int asid16;              /* IDR0.ASID16 (bit 12) */
	int vmid16;              /* IDR0.VMID16 (bit 18) */
	int s1p, s2p;            /* IDR0.S1P (bit 1), IDR0.S2P (bit 0): stage 1 / stage 2 translation */
	unsigned httu;           /* IDR0.HTTU [7:6]: 0 none, 1 access flag, 2 access flag and dirty state */
	unsigned stall_model;    /* IDR0.STALL_MODEL [25:24]: 0 stall and terminate, 1 terminate only, 2 stall forced */
	unsigned st_level;       /* IDR0.ST_LEVEL [28:27]: 0 linear stream table, 1 two-level */
	unsigned arch_major, arch_minor; /* AIDR.ArchMajorRev [7:4], ArchMinorRev [3:0]: SMMUv3.<minor> when major is 0 */
	unsigned implementer, product, variant, revision; /* IIDR [11:0], [31:20], [19:16], [15:12] */
};

/* Decodes the registers of a GET_HW_INFO reply. */
void vmm_hw_decode(const struct vsmmu_hw_info_reply *reply, struct vmm_hw_features *out);

/* The name of an IDR0.STALL_MODEL value ("terminate only"). */
const char *vmm_hw_stall_model_name(unsigned stall_model);

/* Prints what the VMM would advertise to its guest: the raw registers, then the decoded fields. */
void vmm_hw_print(FILE *out, const struct vsmmu_hw_info_reply *reply);

#endif
