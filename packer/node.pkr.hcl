# A Kubernetes node image with containerd and, when containerd_gvisor_runtime is "true", gVisor
# registered as the runtime handler 'gvisor'. Sources: docker (from a local image) and qemu (a VM
# disk from a Debian cloud image). The HCL2 twin of node.json: same variables, defaults, builders,
# provisioners and post-processor. It parses with Packer 1.6.6 on its own; Packer 1.10 and later
# install its plugins with `packer init` from plugins.pkr.hcl beside it.

# The role's variables, handed to the playbook as strings (the role reads "true"/"false").
variable "containerd_gvisor_runtime" {
  type        = string
  default     = "false"
  description = "\"true\" installs gVisor and registers it with containerd."
}

variable "containerd_gvisor_version" {
  type        = string
  default     = "latest"
  description = "gVisor release: latest, yyyymmdd or yyyymmdd.N."
}

variable "containerd_gvisor_mirror_url" {
  type        = string
  default     = "https://storage.googleapis.com/gvisor/releases"
  description = "Base URL of the gVisor release mirror."
}

variable "ansible_extra_vars" {
  type        = string
  default     = "{}"
  description = "Any further role variables, as one JSON object, e.g. {\"containerd_gvisor_runsc_config\": {\"debug\": \"true\"}}; passed last, so it wins."
}

variable "docker_image" {
  type    = string
  default = "containerd-gvisor-node:trixie"
}

variable "docker_cgroup_dir" {
  type    = string
  default = "/sys/fs/cgroup"
}

variable "docker_repository" {
  type    = string
  default = "containerd-gvisor-node"
}

variable "docker_tag" {
  type    = string
  default = "gvisor"
}

variable "qemu_image_url" {
  type    = string
  default = "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
}

variable "qemu_image_checksum" {
  type    = string
  default = "file:https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS"
}

variable "qemu_accelerator" {
  type    = string
  default = "kvm"
}

variable "qemu_disk_size" {
  type    = string
  default = "8G"
}

variable "qemu_output_directory" {
  type    = string
  default = "output-qemu"
}

variable "qemu_vm_name" {
  type    = string
  default = "containerd-gvisor-node.qcow2"
}

# The ansible provisioner's command line and environment (both sources). The role's three variables
# come first; ansible_extra_vars, one JSON object, comes last, so it can set any other role variable.
locals {
  ansible_extra_arguments = [
    "--extra-vars", "containerd_gvisor_runtime=${var.containerd_gvisor_runtime}",
    "--extra-vars", "containerd_gvisor_version=${var.containerd_gvisor_version}",
    "--extra-vars", "containerd_gvisor_mirror_url=${var.containerd_gvisor_mirror_url}",
    "--extra-vars", var.ansible_extra_vars,
  ]
  ansible_env_vars = [
    "ANSIBLE_CONFIG=${path.root}/../ansible.cfg",
    # Packer's SSH proxy offers only ssh-rsa host and user keys.
    "ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=60s -o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
    "ANSIBLE_SSH_TRANSFER_METHOD=piped",
    "ANSIBLE_PIPELINING=True",
  ]
}

# systemd as PID 1 with the host's network and cgroups, every capability but SYS_RESOURCE, so
# containerd runs during the build and the role checks it registered the handler.
source "docker" "docker" {
  image  = var.docker_image
  pull   = false
  commit = true
  run_command = [
    "--detach", "--interactive", "--tty",
    "--network=host",
    "--cgroupns=host",
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined",
    "--tmpfs=/run", "--tmpfs=/run/lock",
    "--volume=${var.docker_cgroup_dir}:/sys/fs/cgroup:rw",
    "{{.Image}}",
    "/lib/systemd/systemd",
  ]
}

# cloud-init reads http/ (the build-time user) through the SMBIOS serial.
source "qemu" "qemu" {
  iso_url          = var.qemu_image_url
  iso_checksum     = var.qemu_image_checksum
  disk_image       = true
  disk_size        = var.qemu_disk_size
  format           = "qcow2"
  accelerator      = var.qemu_accelerator
  headless         = true
  output_directory = var.qemu_output_directory
  vm_name          = var.qemu_vm_name
  http_directory   = "${path.root}/http"
  qemuargs = [
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
  ]
  ssh_username     = "packer"
  ssh_password     = "packer"
  ssh_timeout      = "20m"
  shutdown_command = "sudo sh -c 'userdel --force --remove packer; rm -f /etc/sudoers.d/90-cloud-init-users; shutdown -P now'"
}

build {
  sources = ["source.docker.docker", "source.qemu.qemu"]

  provisioner "ansible" {
    # The playbook finds the collection through playbooks/collections (a link to the repository).
    playbook_file    = "${path.root}/../playbooks/node.yml"
    extra_arguments  = local.ansible_extra_arguments
    ansible_env_vars = local.ansible_env_vars
    # The key is the source's name.
    override = {
      qemu = {
        user = "packer"
      }
    }
  }

  # The image is configured afresh by its own cloud-init at first boot.
  provisioner "shell" {
    only            = ["qemu.qemu"]
    execute_command = "sudo sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "cloud-init clean --logs",
      "truncate -s 0 /etc/machine-id",
    ]
  }

  post-processor "docker-tag" {
    only       = ["docker.docker"]
    repository = var.docker_repository
    tags       = [var.docker_tag]
  }
}
