include $(sort $(wildcard $(BR2_EXTERNAL_BRIG_PATH)/package/*/*.mk))
