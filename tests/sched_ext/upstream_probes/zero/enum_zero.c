/* A loader that leaves SCX_DSQ_LOCAL at 0, as bpftool alone would: the negative control. */
int main(void)
{
	struct enum_zero *skel = SCX_OPS_OPEN(el_ops, enum_zero);
	skel->rodata->__SCX_DSQ_LOCAL = 0;
	SCX_OPS_LOAD(skel, el_ops, enum_zero, uei);
	return 0;
}
