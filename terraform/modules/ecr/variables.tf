variable "name" {
  description = "Repository name of the data-feed image."
  type        = string
  default     = "data-feed"
}

variable "encryption_type" {
  description = "KMS (with kms_key_arn, or the AWS managed key when null) or AES256."
  type        = string
  default     = "KMS"

  validation {
    condition     = contains(["KMS", "AES256"], var.encryption_type)
    error_message = "encryption_type: KMS or AES256."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the repository with encryption_type KMS; null = the AWS managed key."
  type        = string
  default     = null
}

variable "keep_tagged_images" {
  description = "Tagged images kept (the newest); older ones expire."
  type        = number
  default     = 30
}

variable "untagged_image_days" {
  description = "Days an untagged image (an interrupted push, a build cache layer) is kept."
  type        = number
  default     = 7
}

variable "force_delete" {
  description = "Allow destroy to delete the repository with its images."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
