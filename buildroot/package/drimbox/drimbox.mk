################################################################################
#
# drimbox
#
################################################################################

# The sources are the repository this BR2_EXTERNAL tree (buildroot/) lives in.
# With the local site method Buildroot rsyncs that tree into $(@D) and calls
# the version "custom"; there is no download step.
DRIMBOX_SITE = $(BR2_EXTERNAL_DRIMBOX_PATH)/..
DRIMBOX_SITE_METHOD = local

# Cargo.toml: license = "LicenseRef-Proprietary". "make legal-info" lists the
# license but does not copy the sources into the redistributable output.
DRIMBOX_LICENSE = LicenseRef-Proprietary
DRIMBOX_REDISTRIBUTE = NO

# Nothing of a developer's checkout but the sources: target/ alone is gigabytes.
# (.git and the other VCS directories are excluded by Buildroot itself.)
DRIMBOX_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/target \
	--exclude=/buildroot \
	--exclude=/test-artifacts \
	--exclude=/drimbox-demo \
	--exclude=/VENDOR

# Crates. Buildroot's cargo infrastructure vendors the dependencies ("cargo
# vendor --locked") as a post-process of the download step and keeps them in
# the package's tarball in DL_DIR. A package with the local site method has no
# download step, so for drimbox that never happens; vendor.sh does the same
# job just before the configure step (host-rustc, and so cargo, exists then):
#  - it looks for $(DRIMBOX_DL_DIR)/drimbox-vendor-<sha256 of Cargo.lock>.tar.gz;
#  - if that is missing it runs "cargo vendor --locked" (which needs the crate registry,
#    or a CARGO_HOME that already holds every crate) and stores the tarball
#    there, so the next build of the same Cargo.lock is offline;
#  - it unpacks the tarball as $(@D)/VENDOR and points cargo at it with
#    $(@D)/.cargo/config.toml, as Buildroot's own cargo post-process does.
# The build then runs "cargo build --offline --locked" (cargo-package), and
# cargo checks each vendored crate against the checksums in Cargo.lock.
#
# Offline build machine: pre-seed BR2_DL_DIR with the vendored tarball. On any
# machine with network access and cargo, in a checkout of the same commit:
#     buildroot/package/drimbox/vendor.sh pack . /some/dir
# then copy /some/dir/drimbox-vendor-*.tar.gz into $(BR2_DL_DIR)/drimbox/ of
# the build machine. The name carries the Cargo.lock hash: a changed lock file
# asks for a new tarball instead of building against stale crates.
define DRIMBOX_VENDOR_CRATES
	$(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		$(DRIMBOX_PKGDIR)/vendor.sh prepare $(@D) $(DRIMBOX_DL_DIR)
endef
DRIMBOX_PRE_CONFIGURE_HOOKS += DRIMBOX_VENDOR_CRATES

# Only the binary; the library target is built as its dependency.
DRIMBOX_CARGO_BUILD_OPTS = --bin drimbox

# cargo-package's default install ("cargo install --root $(TARGET_DIR)/usr")
# would build a second time and leave .crates.toml/.crates2.json in /usr.
# cargo-package builds for $(RUSTC_TARGET_NAME) (CARGO_BUILD_TARGET), with
# --release unless BR2_ENABLE_DEBUG.
DRIMBOX_CARGO_PROFILE = $(if $(BR2_ENABLE_DEBUG),debug,release)

define DRIMBOX_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(DRIMBOX_CARGO_PROFILE)/drimbox \
		$(TARGET_DIR)/usr/bin/drimbox
endef

# The repository's units, enabled: drimbox.service (the box), drimbox-health.service (the
# verdict boot-complete.target requires), drimbox-ota-commit.service (commits an update once
# the box is healthy), drimbox-egress.service (the per-service egress filter, before it),
# drimbox-ota-spool.path (starts drimbox-ota-spool.service, the root
# installer of what the status page's install form spooled); drimbox-unhealthy.service is
# started by the health unit's OnFailure=.
# The links are what "systemctl enable" makes from their [Install] sections; the preset keeps
# them enabled through the "systemctl preset-all" that Buildroot runs when it assembles the
# root filesystem, whatever presets a distributor adds after ours.
DRIMBOX_UNITS = drimbox.service drimbox-health.service drimbox-unhealthy.service \
	drimbox-ota-commit.service drimbox-ota-spool.service drimbox-ota-spool.path \
	drimbox-egress.service

define DRIMBOX_INSTALL_INIT_SYSTEMD
	$(foreach u,$(DRIMBOX_UNITS),\
		$(INSTALL) -D -m 0644 $(@D)/systemd/$(u) \
			$(TARGET_DIR)/usr/lib/systemd/system/$(u)$(sep))
	$(INSTALL) -D -m 0644 $(DRIMBOX_PKGDIR)/80-drimbox.preset \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/80-drimbox.preset
	mkdir -p $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants \
		$(TARGET_DIR)/etc/systemd/system/boot-complete.target.requires
	ln -sf /usr/lib/systemd/system/drimbox.service \
		$(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/drimbox.service
	ln -sf /usr/lib/systemd/system/drimbox-ota-commit.service \
		$(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/drimbox-ota-commit.service
	ln -sf /usr/lib/systemd/system/drimbox-egress.service \
		$(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/drimbox-egress.service
	ln -sf /usr/lib/systemd/system/drimbox-ota-spool.path \
		$(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/drimbox-ota-spool.path
	ln -sf /usr/lib/systemd/system/drimbox-health.service \
		$(TARGET_DIR)/etc/systemd/system/boot-complete.target.requires/drimbox-health.service
endef

# The service users, created in the image at build time: the root filesystem
# is read-only, so systemd-sysusers cannot add them at boot. Names and groups
# are those of overlay/usr/lib/sysusers.d/drimbox.conf, which stays the
# reference for a writable system (post-image.sh fails if the two disagree):
# "drimbox" is the box's group (the supervisor runs as root:drimbox, see
# systemd/drimbox.service), each service has its own user and group and is
# also a member of drimbox. No password ("*": no login), no home, no shell
# ("-": /bin/false).
# The IDs are fixed, not allocated by Buildroot: /data outlives every root
# filesystem image (A/B updates), and a uid that moved from one image to the
# next would leave the archive owned by another user.
define DRIMBOX_USERS
	- -1 drimbox 800 - - - - DRIMbox group
	drimbox-archive 801 drimbox-archive 801 * - - drimbox DRIMbox archive
	drimbox-receiver 802 drimbox-receiver 802 * - - drimbox DRIMbox DICOM receiver
	drimbox-hl7 803 drimbox-hl7 803 * - - drimbox DRIMbox HL7 listener
	drimbox-publisher 804 drimbox-publisher 804 * - - drimbox DRIMbox DMP publisher
	drimbox-whitelist 805 drimbox-whitelist 805 * - - drimbox DRIMbox whitelist updater
	drimbox-wado 806 drimbox-wado 806 * - - drimbox DRIMbox WADO-RS server
	drimbox-status 807 drimbox-status 807 * - - drimbox DRIMbox status page
endef

$(eval $(cargo-package))
