# AWS IoT Core's own logs (connections, authorization failures, rule
# errors) in CloudWatch: the account-wide logging options, the role IoT Core
# writes with, and the log group it writes to (fixed name AWSIotLogsV2),
# made here so that it is encrypted and kept for var.log_retention_days.

resource "aws_cloudwatch_log_group" "iot" {
  name              = "AWSIotLogsV2"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

data "aws_iam_policy_document" "iot_logging_trust" {
  statement {
    sid     = "IotCoreOfThisAccount"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["iot.amazonaws.com"]
    }

    # Confused-deputy guard: only IoT Core acting for this account.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "iot_logging" {
  name               = "${local.name}-iot-logging"
  assume_role_policy = data.aws_iam_policy_document.iot_logging_trust.json
}

# Writing to its own log group only. CreateLogGroup is allowed on that one
# group (IoT Core asks for it; it exists, so nothing changes); retention is
# not IoT Core's to change.
data "aws_iam_policy_document" "iot_logging" {
  statement {
    sid       = "WriteIotLogGroup"
    effect    = "Allow"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    resources = [aws_cloudwatch_log_group.iot.arn, "${aws_cloudwatch_log_group.iot.arn}:*"]
  }
}

resource "aws_iam_role_policy" "iot_logging" {
  name   = "write-iot-logs"
  role   = aws_iam_role.iot_logging.id
  policy = data.aws_iam_policy_document.iot_logging.json
}

resource "aws_iot_logging_options" "this" {
  default_log_level = var.iot_log_level
  disable_all_logs  = var.iot_log_level == "DISABLED"
  role_arn          = aws_iam_role.iot_logging.arn

  depends_on = [aws_iam_role_policy.iot_logging]
}
