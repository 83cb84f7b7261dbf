################################################################################
#
# brig
#
################################################################################

# The source is the git repository this external tree lives in, at a pinned
# revision, so the image is built from committed code only. Buildroot's cargo
# download post-processing vendors the crates from Cargo.lock into the
# tarball: after "make brig-source" the build needs no network.
BRIG_VERSION = $(call qstrip,$(BR2_PACKAGE_BRIG_VERSION))
BRIG_SITE = $(realpath $(BR2_EXTERNAL_BRIG_PATH)/..)
BRIG_SITE_METHOD = git
BRIG_LICENSE = MIT or Apache-2.0

# Buildroot's cargo infrastructure sets the release profile from the global
# optimisation options (16 codegen units, no LTO unless BR2_ENABLE_LTO).
# brig's own profile is tuned for flash; put it back.
BRIG_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL="z" \
	CARGO_PROFILE_RELEASE_LTO="true" \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS="1" \
	CARGO_PROFILE_RELEASE_PANIC="abort"

# The host build runs "brig check" on the target's /etc/brig in the
# post-build script (board/brig/post-build.sh).
BRIG_DEPENDENCIES = host-brig

$(eval $(cargo-package))
$(eval $(host-cargo-package))
