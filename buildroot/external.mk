# Every package of this tree. Buildroot includes this file after its own packages.
include $(sort $(wildcard $(BR2_EXTERNAL_DRIMBOX_PATH)/package/*/*.mk))
