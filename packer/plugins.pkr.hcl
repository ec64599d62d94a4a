# The plugins node.pkr.hcl needs, for Packer 1.10 and later (which no longer bundle them):
#   packer init packer/            (or: packer init packer/plugins.pkr.hcl)
# Packer 1.6 bundles these plugins and cannot parse this block: give it packer/node.pkr.hcl alone,
# not the packer/ directory.
packer {
  required_plugins {
    docker = {
      source  = "github.com/hashicorp/docker"
      version = ">= 1.0.0, < 2.0.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = ">= 1.0.0, < 2.0.0"
    }
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.0.0, < 2.0.0"
    }
  }
}
