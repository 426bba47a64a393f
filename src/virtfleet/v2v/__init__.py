"""Leaving VMware, Hyper-V and Xen: read their VM descriptions into an import plan, and write ours back out.

readers (vmx, vmdk, ovf/ova, libvirt, xl, hyperv) -> SourceVm -> planner.make_plan -> ImportPlan (pure, golden-tested);
convert.py opens what a plan names (confined to the import directory) and turns each disk into a pool volume;
writers.py describes a virtfleet VM as an OVF, a .vmx, an xl.cfg or a libvirt domain.
"""
